"""The tiny testbed's controls and probes (aa_lib.experiments): the oracle critic, shuffled labels, the rubric's
agreement with pairs, the refinement probe, DPO's logged steps, the validation selection, the paired interval, and
the policy's second SFT stage (`policies.reading_examples`), on text (ti2t) and image (ti2ti) outputs at smoke size."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from aa_lib import data, experiments as E, figures, mini, presets
from aa_lib.policies import policy_for, reading_examples, without_media


@pytest.fixture(scope="module", params=["ti2t", "ti2ti"])
def cell(request, smoke_cells):
    return smoke_cells(request.param)


@pytest.mark.parametrize("subtask", ["ti2t", "t2i"])
def test_shuffled_pairs_swap_about_half_and_keep_the_prompts(subtask):
    ds = mini.dataset(subtask, 64, seed=3, root=".cache/mini")
    pairs = data.to_preference(ds)
    shuffled = E.shuffled_pairs(pairs, seed=0)
    def side(row, name):  # an image response is its image (its messages are the same image turn on both sides)
        return row[name], [np.asarray(im).tolist() for im in row.get(f"{name}_images") or []]

    swapped = [side(a, "chosen") == side(b, "rejected") and side(a, "rejected") == side(b, "chosen")
               and side(a, "chosen") != side(a, "rejected") for a, b in zip(pairs, shuffled)]
    kept = [side(a, "chosen") == side(b, "chosen") for a, b in zip(pairs, shuffled)]
    assert all(s or k for s, k in zip(swapped, kept))
    assert 16 <= sum(swapped) <= 48
    assert [a["prompt"] for a in pairs] == [b["prompt"] for b in shuffled]
    again = E.shuffled_pairs(pairs, seed=0)
    assert [side(r, "chosen") for r in again] == [side(r, "chosen") for r in shuffled]  # seeded
    oracle = E.oracle_for_rows(ds)
    # The rows' labels mostly agree with the rubric; shuffling them brings agreement towards disagreement.
    real, fake = E.pair_agreement(pairs, oracle), E.pair_agreement(shuffled, oracle)
    assert real["agree"] > real["disagree"] + 20
    assert fake["agree"] - fake["disagree"] < real["agree"] - real["disagree"] - 20
    assert real["agree"] + real["ties"] + real["disagree"] == pytest.approx(100)


def test_oracle_critic_says_what_the_rubric_says(cell):
    held = cell["held"]
    oracle = E.Critic.oracle(cell["subtask"], held.examples, held.metas)
    fam = policy_for(cell["subtask"])
    ys = fam.respond(fam.load(cell["policy"]), cell["subtask"], held.examples, cell["sizes"], 0)
    texts = oracle.critique(held.examples, ys)
    assert texts == [mini.rubric_score(m, y, cell["subtask"])["critique"] for m, y in zip(held.metas, ys)]
    assert all(t.startswith("##Critique:") for t in texts)
    assert E.Critic("generic", cell["subtask"], text=E.GENERIC_CRITIQUE).critique(held.examples, ys) == \
        [E.GENERIC_CRITIQUE] * len(ys)


def test_oracle_synthesis_pairs_and_their_agreement(cell, tmp_path):
    sizes, align = cell["sizes"], cell["align"]
    oracle = E.oracle_for_rows(align)
    synth = E.synthesize(cell["policy"], oracle, align, tmp_path / "oracle", 4, sizes, 0)
    meta = json.loads((tmp_path / "oracle" / "synthesis_meta.json").read_text())
    assert meta["feedback_model"] == "mini rubric (oracle)"
    shard = [json.loads(line) for line in (tmp_path / "oracle" / "synthesis.jsonl").read_text().splitlines()]
    assert shard and all(r["c"].startswith("##Critique:") for r in shard)
    if synth is not None:  # a smoke policy may refine nothing: then every item is dropped as identical
        agree = E.pair_agreement(synth, oracle)
        assert agree["n"] == len(synth)


def test_refinement_probe_reports_every_critic(cell):
    sizes, held = cell["sizes"], cell["held"]
    fb = E.train_feedback(cell["subtask"], cell["policy"], cell["align"], cell["out"] / "fb", sizes, 0)
    probe = E.refinement_probe(cell["policy"], held, sizes, 0, fb)
    assert set(probe["critics"]) == {"oracle", "generic", "none", "trained"}
    assert probe["n"] == len(held.metas)
    for c in probe["critics"].values():
        assert c["score_y_star"] - c["y_star_minus_greedy"] == pytest.approx(probe["score_greedy"])
        assert (c["fix_rate"] is None) == (probe["perfect_y"] == 100)
    critic = probe["critic"]
    assert 0 <= critic["well_formed"] <= critic["finished"] <= 100


def test_dpo_logs_every_step_and_selection_uses_the_validation_split(cell, tmp_path):
    sub, sizes = cell["subtask"], cell["sizes"]
    out = E.dpo(sub, cell["policy"], data.to_preference(cell["align"]), tmp_path / "dpo",
                E.Sizes(**{**E.sizes_dict(sizes), "dpo_steps": 2}), 0)
    log = E.dpo_log(out)
    assert [r["step"] for r in log] == [1, 2]
    assert all("loss" in r for r in log)
    rows, val = E.validation_split(sub, sizes, root=cell["root"])
    held_prompts = {json.loads(m)["id"] for m in cell["held"].metas}
    assert not held_prompts & {json.loads(m)["id"] for m in val.metas}
    assert not {json.loads(m)["id"] for m in cell["align"]["mini_meta"]} & {json.loads(m)["id"] for m in
                                                                          rows["mini_meta"]}


def test_fix_values_reads_the_refinement():
    c = "##Critique: the response says the shape is square , but it is circle . ##Refinement: name the shape : circle ."
    assert E.fix_values(c) == {"circle"}
    assert E.fix_values("##Critique: the response is correct , clear and complete .") == set()


def test_paired_delta_interval():
    rng = np.random.default_rng(0)
    shift = 2.0 + rng.normal(0, 1, size=(3, 300))
    m, lo, hi = figures.paired_delta(shift)
    assert lo < m < hi and lo > 1.5 and hi < 2.5
    m0, lo0, hi0 = figures.paired_delta(rng.normal(0, 1, size=(3, 300)))
    assert lo0 < 0 < hi0
    wide = figures.paired_delta(shift + np.array([[-3.0], [0.0], [3.0]]))  # seeds that disagree widen it
    assert wide[2] - wide[1] > 3 * (hi - lo)
    with pytest.raises(ValueError, match="seeds x prompts"):
        figures.paired_delta([1.0, 2.0])


def test_reading_examples_target_the_fix_and_drop_media(tmp_path):
    sizes = E.experiment_sizes(True, {"reading_samples": 2, "reading_media_drop": 1.0}, "ti2t")
    rows, _ = E.world_rows("ti2t", 0, sizes, tmp_path / "mini")
    fam = policy_for("ti2t")
    pol = fam.load(E.build_untrained("ti2t", tmp_path / "u", 0, sizes))
    ex = reading_examples(pol, rows, sizes, 0)
    assert len(ex) == 2 * len(rows)
    metas = list(rows["mini_meta"]) * 2
    top = E.max_overall("ti2t")
    for e, meta in zip(ex, metas):
        y = e["prompt"][1]["content"][0]["text"]
        target = e["completion"][0]["content"][0]["text"]
        verdict = mini.rubric_score(meta, y, "ti2t")
        assert target == (y if verdict["overall"] == top else json.loads(meta)["reference"])
        assert verdict["critique"] in e["prompt"][2]["content"][0]["text"]
        assert e["images"] == [] and all(p["type"] == "text" for m in e["prompt"] for p in m["content"])
    keep = reading_examples(pol, rows, E.Sizes(**{**E.sizes_dict(sizes), "reading_media_drop": 0.0}), 0)
    assert all(len(e["images"]) == 1 for e in keep)
    stripped = without_media(keep[0])
    assert "images" not in stripped and stripped["prompt"][0]["content"][-1]["type"] == "text"


def test_settings_ran_say_what_the_experiments_override():
    base = E.sizes_dict(E.experiment_sizes(False, subtask="ti2t"))
    sizes = E.Sizes(**{**base, "dpo_lr": 5e-5, "dpo_llf_lr": 2e-4, "dpo_llf_steps": 16})
    rows = {(r["stage"], r["hyperparameter"]): r["value"] for r in presets.settings_ran("ti2t", sizes)}
    assert rows["dpo", "learning_rate"] == 5e-5 and rows["dpo", "learning_rate_synthesized_pairs"] == 2e-4
    assert rows["dpo", "steps"] == sizes.dpo_steps != 16 and rows["dpo", "steps_synthesized_pairs"] == 16
    assert rows["policy SFT stage 2 (reading)", "steps"] == sizes.reading_steps
    assert rows["ppo", "rollouts"] == sizes.ppo_episodes
    assert rows["feedback_model (shared critic)", "steps"] == sizes.critic_steps and sizes.critic_rows >= 1000
    assert ("feedback_model", "steps") not in rows  # no per-seed feedback model where a shared critic is trained
    image_sizes = E.experiment_sizes(False, subtask="t2i")
    image = {(r["stage"], r["hyperparameter"]) for r in presets.settings_ran("t2i", image_sizes)}
    assert ("policy SFT stage 2 (reading)", "steps") not in image


def test_shared_critic_learns_the_rubric_critiques_of_its_examples(cell):
    """`train_policy` trains the subtask's shared critic beside the policy, on fresh rows of `CRITIC_SEED`: text
    examples are (x with its media, the policy's own sample y, the rubric's critique of y); image examples are the
    rows' own annotated responses. The critic's weights moved away from the policy's."""
    import datasets
    from safetensors.torch import load_file

    subtask, sizes = cell["subtask"], cell["sizes"]
    examples = datasets.load_from_disk(str(cell["out"] / E.CRITIC / "examples"))
    rows = mini.dataset(subtask, sizes.critic_rows, seed=E.CRITIC_SEED, root=cell["root"])
    assert len(examples) == len(rows) == sizes.critic_rows
    if policy_for(subtask).__class__.__name__ == "TextPolicy":
        for ex, meta in zip(examples, rows["mini_meta"]):
            text = lambda m: m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]  # noqa: E731
            y, request = ex["prompt"][-2], ex["prompt"][-1]
            assert y["role"] == "assistant" and request["content"][0]["text"] == data.CRITIQUE_REQUEST
            assert text(ex["completion"][0]) == mini.rubric_score(meta, text(y), subtask)["critique"]
            assert len(ex["images"]) == 1  # the critic sees the media the reading policy learned to do without
    else:
        assert examples["mini_meta"] == rows["mini_meta"]
    critic, policy = (load_file(str(p / "model.safetensors")) for p in (cell["out"] / E.CRITIC / "model",
                                                                          cell["out"] / "policy"))
    assert any(not np.array_equal(critic[k].float().numpy(), policy[k].float().numpy()) for k in policy)


def test_every_seed_and_fraction_uses_the_shared_critic(smoke_batch):
    from sweeps import check_sweep

    from aa_lib import runs

    _, runs_root, _ = smoke_batch
    mains = runs.load_seed_results("llf_main", runs_root)
    assert mains and all(r["results"]["critic"] == "shared" for r in mains)
    assert all(r["results"]["feedback_model"].endswith(f"/{E.CRITIC}/model") for r in mains)
    for run in runs.load_results("llf_main", runs_root):  # learning rates chosen on the validation split
        sel, res = run["results"]["lr_selection"], run["results"]
        check_sweep(sel, E.experiment_sizes(True, subtask=res["subtask"]))
        for seed in res["per_seed"]:  # what was chosen is what ran
            assert all(seed["sizes"][k] == sel[k] for k in E.SELECTED)
    fractions = runs.load_seed_results("llf_feedback_fraction", runs_root)
    assert fractions and all(r["results"]["critic"] == "shared" for r in fractions)
    chosen = {(r["results"]["subtask"], r["results"]["seed"]): r["results"]["sizes"] for r in mains}
    for r in fractions:  # Fig. 5's DPO runs as llf_main's did
        main = chosen[r["results"]["subtask"], r["results"]["seed"]]
        assert all(r["results"]["sizes"][k] == main[k] for k in E.SELECTED)
    assert all(r["results"]["prompts"] == r["results"]["sizes"]["n_heldout"] for r in fractions)  # smoke: all
