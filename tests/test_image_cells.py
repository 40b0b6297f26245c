"""The LLF cells of aa_lib.experiments (the same functions the text cells run) on image outputs
(aa_lib.policies.ImagePolicy) at smoke size, t2i and ti2ti: the policy's SFT mix, the feedback model's loss on
critique tokens only, synthesized pairs that differ, survive a reload and resume after an interruption without
redoing finished items, DPO that moves the weights, and the cell results' shapes.

Whether the SFT policy beats the untrained one is a measurement at full size (~4 min, too slow here); its numbers
are in the comment on `experiments.SIZES`."""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace

import numpy as np
import pytest
import torch

from aa_lib import data, experiments as E, llf, mini, policies as P
from aa_lib.models import load_model


@pytest.fixture(scope="module", params=["t2i", "ti2ti"])
def cell(request, smoke_cells):
    """A smoke policy for the subtask, its alignment rows and held-out prompts (shared with test_testbed)."""
    return smoke_cells(request.param)


def test_sizes_and_dispatch():
    assert E.experiment_sizes(True, subtask="t2i").vq_budget == "smoke"
    assert E.experiment_sizes(False, subtask="ti2ti").vq_budget == "tiny"
    assert E.experiment_sizes(False, subtask="t2i").n_align == 32  # the image cells align on 32 rows
    assert E.family_for("t2i") == "janus" and E.family_for("TI2TI") == "janus"
    assert isinstance(P.policy_for("ti2ti"), P.ImagePolicy) and isinstance(P.policy_for("ti2t"), P.TextPolicy)
    with pytest.raises(ValueError, match="no LLF experiment"):
        E.heldout("t2a", E.experiment_sizes(True, subtask="t2a"))


def test_policy_sft_rows_target_the_canonical_answer(tmp_path):
    from aa_lib.image_policy import sft_rows

    ds = mini.dataset("ti2ti", 4, seed=1, root=tmp_path)
    rows = P.policy_sft_rows("ti2ti", ds, 6, 0.5, seed=0)
    assert len(rows) == 6 + 3
    plain = [r for r in rows if not r["id"].startswith("refine")]
    fresh = {r["id"]: r for r in sft_rows("ti2ti", 6, 0)}  # the plain examples are image_policy's fresh rows
    assert sorted(r["id"] for r in plain) == sorted(fresh)
    assert all(r["completion_images"] == fresh[r["id"]]["completion_images"] for r in plain)
    refine = [r for r in rows if r["id"].startswith("refine")]
    for r in refine:
        assert [m["role"] for m in r["prompt"]] == ["user", "assistant", "user"]
        assert r["prompt"][2]["content"][0]["text"].endswith(llf.REFINE_TEMPLATE.format(critique="")[1:])
        assert len(r["images"]) == 2  # the input image and the critiqued response image
        meta = ds[int(r["id"].rsplit("-r", 1)[1])]["mini_meta"]
        assert r["prompt"][0] == data.to_sft(ds.select([int(r["id"].rsplit("-r", 1)[1])]))[0]["prompt"][0]
        answer = {"text": r["completion"][0]["content"][0]["text"], "image": r["completion_images"][0]}
        assert mini.rubric_score(meta, answer)["overall"] == E.max_overall("ti2ti")  # x's canonical answer
    t2i = P.policy_sft_rows("t2i", mini.dataset("t2i", 2, seed=1, root=tmp_path), 3, 2.0, seed=0)
    refs = [r["id"] for r in t2i if r["id"].startswith("refine")]
    assert len(refs) == 6 and len({i.rsplit("-r", 1)[1] for i in refs}) == 2  # 4 responses, drawn again when used
    assert all(isinstance(r["prompt"], list) for r in t2i)  # one layout: the t2i prompt strings become user turns


def test_feedback_loss_on_critique_tokens_only(cell):
    from aa_lib.presets import make_config

    sizes = cell["sizes"]
    cfg = make_config("feedback_model", cell["subtask"], cell["out"] / "fb_probe", max_steps=1,
                      per_device_train_batch_size=2, report_to="none")
    trainer = llf.build_feedback_trainer(cfg, cell["trained"]["policy"], cell["align"])
    batch = next(iter(trainer.get_train_dataloader()))
    tok = trainer.processing_class.tokenizer
    fb = data.to_feedback_sft(cell["align"])
    for i in range(2):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        said = tok.decode(labelled, skip_special_tokens=True).strip()
        assert said in {fb[k]["completion"][0]["content"][0]["text"] for k in range(len(fb))}
    assert "pixel_values" in batch  # the response image goes through the understanding path
    path = E.train_feedback(cell["subtask"], cell["trained"]["policy"], cell["align"], cell["out"] / "feedback",
                            sizes, 0)
    cell["feedback"] = path


def test_synthesis_pairs_differ_reload_and_resume(cell, tmp_path, monkeypatch):
    sizes, policy = cell["sizes"], cell["trained"]["policy"]
    small = replace(sizes, gen_batch_size=2)
    if cell.get("feedback") is not None:  # a 2-step feedback model seldom ends a critique: cut critiques are dropped
        E.synthesize(policy, cell["feedback"], cell["align"], tmp_path / "fb", 6, small, 0)
        records = [json.loads(line) for line in (tmp_path / "fb" / "synthesis.jsonl").read_text().splitlines()]
        assert records and all(r["reason"] == "over_length: c cut at critique_tokens" and not r["kept"]
                               for r in records if not r["c_finished"])
    feedback = E.oracle_for_rows(cell["align"])  # always finished: pairs to check
    synth = E.synthesize(policy, feedback, cell["align"], tmp_path / "a", 6, small, 0)
    rep = E.synthesis_report(tmp_path / "a")
    assert rep["kept"] == len(synth) > 0 and rep["items"] == rep["kept"] + rep["dropped"]
    for row in synth:
        a, b = np.asarray(row["chosen_images"][0]), np.asarray(row["rejected_images"][0])
        assert not (np.array_equal(a, b) and row["chosen"] == row["rejected"])
    again = llf.load_synthesized(tmp_path / "a")
    assert [np.asarray(r["chosen_images"][0]).tolist() for r in again] == \
        [np.asarray(r["chosen_images"][0]).tolist() for r in synth]

    real, calls = P.improve_images, []

    def interrupted(*args, **kw):
        calls.append(len(args[5]))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kw)

    monkeypatch.setattr(P, "improve_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        E.synthesize(policy, feedback, cell["align"], tmp_path / "b", 6, small, 0)
    shard = [json.loads(line) for line in (tmp_path / "b" / "synthesis.jsonl").read_text().splitlines()]
    assert len(shard) == 2
    monkeypatch.setattr(P, "improve_images", real)
    resumed = E.synthesize(policy, feedback, cell["align"], tmp_path / "b", 6, small, 0)
    rep_b = E.synthesis_report(tmp_path / "b")
    assert rep_b["resumed_items"] == 2 and rep_b["generated_items"] == rep["items"] - 2
    assert [np.asarray(r["rejected_images"][0]).tolist() for r in resumed] == \
        [np.asarray(r["rejected_images"][0]).tolist() for r in synth]  # same items as the uninterrupted run
    cell["synth"] = synth


def test_dpo_moves_the_weights_and_results_have_the_text_cells_shape(cell):
    sub, sizes, held, policy = cell["subtask"], cell["sizes"], cell["held"], cell["trained"]["policy"]
    out = E.dpo(sub, policy, data.to_preference(cell["align"]), cell["out"] / "dpo", sizes, 0)
    before, _ = load_model(policy)
    after, _ = load_model(out)
    moved = [n for (n, p), q in zip(before.named_parameters(), after.parameters()) if not torch.equal(p, q)]
    assert any("language_model" in n for n in moved)
    res = E.evaluate(out, held, sizes)
    assert set(E.summary(res)) == {"score", "perfect", "overall", "max_overall", "dimensions", "n", "examples",
                                   "scores"}
    assert len(res["scores"]) == res["n"] and np.mean(res["scores"]) == pytest.approx(res["score"])
    assert res["n"] == len(held.metas) == len(res["responses"]) and 0 <= res["score"] <= 100
    json.dumps(E.summary(res))
    assert res["score"] == E.evaluate(out, held, sizes)["score"]  # greedy: the same on rerun
    resp = E.respondent_scores(held)
    assert set(resp) == set(mini.RESPONDENTS) and resp["mini-expert"]["score"] >= resp["mini-careless"]["score"]
    ab = E.ablation(policy, cell.get("feedback"), held, sizes, 0)
    assert ab["n"] == len(held.metas) and 0 <= ab["win_rate"] <= 100
    json.dumps({k: v for k, v in ab.items()})


def test_lr_selection_sweeps_the_image_policy_on_the_validation_split(cell, monkeypatch, tmp_path):
    """The text cells' `lr_selection` on an image policy: DPO on the validation rows' binary and oracle-synthesized
    pairs, PPO with a reward model, every run scored on the validation prompts (never held-out ones)."""
    sub, policy = cell["subtask"], cell["trained"]["policy"]
    # one rate each (the text smoke batch checks the choice between rates), then the longer runs at it
    sizes = replace(cell["sizes"], dpo_lr_grid=(2e-4,), ppo_lr_grid=(1e-3,), dpo_steps_grid=(2,),
                    ppo_episodes_grid=(4,))
    monkeypatch.setattr(E, "initial_checkpoint", lambda subtask, profile="tiny": (Path(policy), {"seed": 0}))
    from sweeps import check_sweep

    sel = E.lr_selection(sub, tmp_path, sizes)
    check_sweep(sel, sizes)
    assert sel["prompts"] == sizes.n_validation and len(sel["sweep"]) >= len(sizes.dpo_lr_grid) + len(
        sizes.ppo_lr_grid) + len(sizes.ppo_episodes_grid)
    _, val = E.validation_split(sub, sizes)
    assert not set(val.metas) & set(cell["held"].metas)


def test_ppo_with_a_reward_model_over_response_images(cell):
    sub, sizes, policy = cell["subtask"], cell["sizes"], cell["trained"]["policy"]
    pairs = data.to_reward_pairs(cell["align"])
    ppo_path, rm_path = E.ppo(sub, policy, pairs, data.to_prompts(cell["align"]), cell["out"] / "ppo", sizes, 0)
    fn = P.reward_fn_of(rm_path)
    ex = P.prompt_of(data.to_prompts(cell["align"])[0])
    img = np.full((32, 32, 3), 235, np.uint8)
    if sub == "ti2ti":
        ex["completion"] = [P.image_turn("the circle is red .")]
    r = fn([ex, ex], [img, img])
    assert len(r) == 2 and np.isfinite(r).all() and abs(r[0] - r[1]) < 1e-5 * (1 + abs(r[0]))
    assert (ppo_path / "aa_image_ppo.json").exists()
