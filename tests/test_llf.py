"""LLF on tiny real models (llama for t2t, llava for ti2t) and align-anything-mini data: batched seeded generation,
the feedback model's loss mask, self-improvement prompts, preference synthesis (filters, reload, resume), DPO+LLF."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from aa_lib import data, llf, mini
from aa_lib.models import build_tiny, load_model
from aa_lib.train.sft import SFTConfig

FAMILY = {"t2t": "llama", "ti2t": "llava"}


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Mini t2t / ti2t data (loaded + normalized) and a tiny untrained model per family, built once."""
    root = tmp_path_factory.mktemp("llf")
    out = {"root": root}
    for st, fam in FAMILY.items():
        rows = mini.generate(st, 8, seed=0)
        ds = data.load(mini.write(rows, root / f"data_{st}"), st)
        corpus = [v for r in rows for k, v in r.items() if isinstance(v, str) and k != "mini_meta"]
        corpus += [llf.REFINE_TEMPLATE, data.CRITIQUE_REQUEST]
        out[st] = {"ds": ds, "prompts": data.to_prompts(ds),
                   "model": build_tiny(fam, root / f"model_{fam}", corpus, seed=0)}
    return out


def _examples(world, st):
    p = world[st]["prompts"]
    return [p[i] for i in range(len(p))]


@pytest.mark.parametrize("st", ["t2t", "ti2t"])
def test_generation_batched_equals_unbatched_and_is_seeded(world, st):
    model, proc = load_model(world[st]["model"])
    ex = _examples(world, st)
    greedy = llf.GenerationOptions(max_new_tokens=8)
    batched = llf.generate(model, proc, ex, greedy, batch_size=4)
    assert batched == llf.generate(model, proc, ex, greedy, batch_size=1)
    assert all(batched)  # untrained, but it says something

    sample = llf.GenerationOptions(max_new_tokens=8, do_sample=True, temperature=1.0)
    a = llf.generate(model, proc, ex, sample, batch_size=3, seed=7)
    # Same seed: same samples whatever the batching and order.
    assert a == llf.generate(model, proc, ex[::-1], sample, batch_size=2, seed=7)[::-1]
    assert a != llf.generate(model, proc, ex, sample, batch_size=3, seed=8)
    assert a != batched  # sampling is not greedy decoding


def test_critique_and_refine_prompts_follow_upstream():
    ex = {"prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                 {"type": "text", "text": "what colour ?"}]}], "images": ["img"]}
    c = llf.critique_example(ex, "red")
    assert [m["role"] for m in c["prompt"]] == ["user", "assistant", "user"]
    assert c["prompt"][1]["content"] == [{"type": "text", "text": "red"}]
    assert c["prompt"][2]["content"][0]["text"] == "Please provide a critique of the response."
    assert c["images"] == ["img"]
    audio = llf.critique_example({"prompt": ex["prompt"], "audios": ["a"]}, "high")
    assert audio["prompt"][2]["content"][0]["text"] == "Please provide the ##Critique and ##Refinement."
    r = llf.refine_example({"prompt": [{"role": "user", "content": "sort: b a"}]}, "b a", "##Critique: wrong order")
    assert r["prompt"][1] == {"role": "assistant", "content": "b a"}
    assert r["prompt"][2]["content"] == ("##Critique: wrong order. Now, please refine the response based on the "
                                         "critique and refinement suggestions.")


@pytest.mark.parametrize("st", ["t2t", "ti2t"])
def test_feedback_model_loss_is_on_critique_tokens_only(world, st, tmp_path):
    cfg = SFTConfig(output_dir=str(tmp_path / "fb"), max_steps=1, per_device_train_batch_size=16, max_length=256)
    trainer = llf.build_feedback_trainer(cfg, world[st]["model"], world[st]["ds"])
    fb = data.to_feedback_sft(world[st]["ds"])
    critiques = sorted(ex["completion"][0]["content"] if st == "t2t" else ex["completion"][0]["content"][0]["text"]
                       for ex in fb)
    batch = next(iter(trainer.get_train_dataloader()))
    tok = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    labelled = []
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        mask = labels != -100
        assert torch.equal(labels[mask], ids[mask])
        first = int(mask.nonzero()[0])
        assert mask[first:].sum() == mask.sum()  # one contiguous span: the final assistant turn
        text = tok.decode(ids[mask])
        # The critique and its end-of-turn token (TRL's text path also labels the template's newline after it).
        assert text.startswith(" ##Critique:"), text
        labelled.append(text.removesuffix("\n").removesuffix(tok.eos_token).strip())
    assert sorted(labelled) == critiques


def test_train_feedback_model_learns_and_saves(world, tmp_path):
    base = world["t2t"]["model"]
    cfg = SFTConfig(output_dir=str(tmp_path / "fb"), max_steps=6, per_device_train_batch_size=8, learning_rate=2e-3,
                    max_length=256, logging_steps=1)
    out = llf.train_feedback_model(cfg, base, world["t2t"]["ds"], fraction=0.5)
    trained, _ = load_model(out)
    before, _ = load_model(base)
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert len(changed) == len(list(trained.parameters()))
    # The critique loss went down on the training critiques.
    batch = next(iter(llf.build_feedback_trainer(cfg, base, world["t2t"]["ds"], fraction=0.5).get_train_dataloader()))
    with torch.no_grad():
        assert trained(**batch).loss < before(**batch).loss
    with pytest.raises(ValueError, match="fraction"):
        llf.feedback_sft_examples(world["t2t"]["ds"], fraction=0)
    world["t2t"]["feedback"] = out


def test_pair_filter_reasons():
    rec = dict(y="a  b", y_star="a b", y_tokens=3, y_star_tokens=3, y_finished=True, y_star_finished=True)
    assert llf.pair_filter(rec, None).startswith("identical")
    assert llf.pair_filter({**rec, "y_star": " \n"}, None) == "empty: y*"
    assert llf.pair_filter({**rec, "y_star": "c", "y_finished": False}, None).startswith("over_length: y cut")
    assert llf.pair_filter({**rec, "y_star": "c", "y_finished": False}, None, drop_truncated=False) is None
    assert llf.pair_filter({**rec, "y_star": "c", "y_star_tokens": 9}, 8).startswith("over_length: y* has 9")
    assert llf.pair_filter({**rec, "y_star": "c"}, None) is None
    assert llf.pair_filter({**rec, "y_star": "c", "c_finished": False}, None) == "over_length: c cut at critique_tokens"
    assert llf.pair_filter({**rec, "y_star": "c", "c_finished": False}, None, drop_truncated=False) is None


def _config(path, **kw):
    kw.setdefault("policy_generation", llf.GenerationOptions(max_new_tokens=6, do_sample=True))
    kw.setdefault("feedback_generation", llf.GenerationOptions(max_new_tokens=6))
    kw.setdefault("refine_generation", llf.GenerationOptions(max_new_tokens=6))
    return llf.SynthesisConfig(output_dir=str(path), drop_truncated=False, **kw)  # untrained models rarely stop


def test_synthesized_pairs_differ_and_survive_reload(world, tmp_path):
    st = "ti2t"
    cfg = _config(tmp_path / "syn", target_size=10, max_rounds=2, batch_size=4)
    pairs = llf.synthesize_preferences(cfg, world[st]["model"], world[st]["ds"])  # the policy is its own critic
    report = pairs.aa_report
    assert len(pairs) == 10 and report["shortfall"] == 0
    assert report["items"] == report["kept"] + report["dropped"] >= 10
    assert pairs.features == data.to_preference(world[st]["ds"]).features  # DPO / reward trainers take it as is
    for ex in pairs:
        assert ex["chosen"][0]["content"][0]["text"] != ex["rejected"][0]["content"][0]["text"]
        assert len(ex["images"]) == 1 and ex["images"][0].size == (32, 32)
    again = llf.load_synthesized(tmp_path / "syn")
    assert again.to_list() == pairs.to_list()
    assert json.loads((tmp_path / "syn" / "report.json").read_text())["kept"] == 10


def test_shortfall_is_reported_when_prompts_run_out(world, tmp_path):
    cfg = _config(tmp_path / "syn", target_size=100, max_rounds=2, batch_size=8)
    pairs = llf.synthesize_preferences(cfg, world["t2t"]["model"], world["t2t"]["prompts"])
    n = len(world["t2t"]["prompts"])
    assert pairs.aa_report["items"] == 2 * n
    assert pairs.aa_report["shortfall"] == 100 - len(pairs)


class _Counting:
    """Counts the rows a model generates for (wraps model.generate)."""

    def __init__(self, model):
        self.rows, self.inner = 0, model.generate
        model.generate = self

    def __call__(self, *args, **kwargs):
        self.rows += kwargs["input_ids"].shape[0]
        return self.inner(*args, **kwargs)


def test_interrupted_synthesis_resumes_without_redoing_items(world, tmp_path):
    st = "t2t"
    policy, proc = load_model(world[st]["model"])
    feedback = world[st].get("feedback") or world[st]["model"]
    fb_model, fb_proc = load_model(feedback)
    prompts = world[st]["prompts"]
    ref = llf.synthesize_preferences(_config(tmp_path / "ref", target_size=12, batch_size=3), policy, prompts,
                                     fb_model, processor=proc, feedback_processor=fb_proc)

    pol_calls, fb_calls = _Counting(policy), _Counting(fb_model)
    seen = []

    def crash(records):
        seen.append(len(records))
        if len(seen) == 2:
            raise RuntimeError("interrupted")

    cfg = _config(tmp_path / "run", target_size=12, batch_size=3)
    with pytest.raises(RuntimeError, match="interrupted"):
        llf.synthesize_preferences(cfg, policy, prompts, fb_model, processor=proc, feedback_processor=fb_proc,
                                   on_batch=crash)
    shard = tmp_path / "run" / "synthesis.jsonl"
    assert len(shard.read_text().splitlines()) == 6
    assert (pol_calls.rows, fb_calls.rows) == (12, 6)  # y and y* per item; one critique per item
    with open(shard, "a") as f:
        f.write('{"id": "torn')  # a crash in the middle of a write
    resumed = llf.synthesize_preferences(cfg, policy, prompts, fb_model, processor=proc, feedback_processor=fb_proc)
    items = resumed.aa_report["items"]
    assert resumed.aa_report["resumed_items"] == 6
    assert resumed.aa_report["generated_items"] == items - 6
    assert (pol_calls.rows, fb_calls.rows) == (2 * items, items)  # nothing finished was generated twice
    ids = [json.loads(line)["id"] for line in shard.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == items
    assert resumed.to_list() == ref.to_list()  # same pairs as the uninterrupted run

    with pytest.raises(ValueError, match="other settings"):
        llf.synthesize_preferences(_config(tmp_path / "run", target_size=12, seed=1), policy, prompts, fb_model,
                                   processor=proc, feedback_processor=fb_proc)


def test_dpo_llf_trains_the_policy_on_synthesized_pairs(world, tmp_path):
    from aa_lib.train.dpo import DPOConfig, train_dpo

    st = "t2t"
    syn = _config(tmp_path / "syn", target_size=4, batch_size=4)
    dpo = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=4,
                    learning_rate=1e-3, max_length=128)
    pairs = llf.synthesize_preferences(syn, world[st]["model"], world[st]["ds"], world[st].get("feedback"))
    out = train_dpo(dpo, world[st]["model"], pairs)
    trained, _ = load_model(out)
    before, _ = load_model(world[st]["model"])
    assert any(not torch.equal(p, before.get_parameter(n)) for n, p in trained.named_parameters())
    assert len(llf.load_synthesized(tmp_path / "syn")) == 4


def test_self_improve_without_feedback_model(world):
    ex = _examples(world, "ti2t")[:3]
    opts = llf.GenerationOptions(max_new_tokens=5, do_sample=True)
    out = llf.self_improve(world["ti2t"]["model"], ex, None, policy_options=opts,
                           feedback_options=llf.GenerationOptions(max_new_tokens=5),
                           refine_options=llf.GenerationOptions(max_new_tokens=5), seed=3)
    assert [sorted(o)[:3] for o in out] == [["c", "c_finished", "y"]] * 3
    assert all(o["y"] and o["c"] and o["y_star"] for o in out)
    again = llf.self_improve(world["ti2t"]["model"], ex[::-1], None, policy_options=opts,
                             feedback_options=llf.GenerationOptions(max_new_tokens=5),
                             refine_options=llf.GenerationOptions(max_new_tokens=5), seed=3, batch_size=1)
    assert again[::-1] == out


def test_ppo_llf_with_images(world, tmp_path):
    from aa_lib.train.ppo import PPOConfig, train_ppo
    from aa_lib.train.reward import RewardConfig, load_reward_model, train_reward

    st = "ti2t"
    syn = _config(tmp_path / "syn", target_size=4, batch_size=4)
    rc = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=2, per_device_train_batch_size=4, max_length=128)
    pc = PPOConfig(output_dir=str(tmp_path / "ppo"), total_episodes=4, per_device_train_batch_size=2,
                   num_mini_batches=1, response_length=6, max_length=256, learning_rate=1e-3)
    pairs = llf.synthesize_preferences(syn, world[st]["model"], world[st]["ds"])
    reward_model, _ = load_reward_model(train_reward(rc, world[st]["model"], llf.to_reward_pairs(pairs)))
    out = train_ppo(pc, world[st]["model"], reward_model, data.to_prompts(world[st]["ds"]))
    assert (tmp_path / "rm").is_dir()
    trained, _ = load_model(out)
    before, _ = load_model(world[st]["model"])
    assert any(not torch.equal(p, before.get_parameter(n)) for n, p in trained.named_parameters())


def test_win_rate_counts_ties_half():
    judge = lambda i, a, b: [1, 2, "tie", 1][i]  # noqa: E731
    r = llf.win_rate(judge, ["y"] * 4, ["s"] * 4)
    assert (r["wins"], r["ties"], r["losses"], r["win_rate"]) == (2, 1, 1, 0.625)


def test_example_keys_follow_media_content_not_paths(tmp_path):
    """Sampling seeds come from example keys: the same clip in another checkout (another absolute path) must give
    the same key, or a fresh clone elsewhere samples other responses (seen: TA2T / TV2T synthesis)."""
    import shutil

    from aa_lib.llf.generation import example_key

    wav = mini.generate("ta2t", 1, seed=0)[0]["audio_path"]["bytes"]
    for folder in ("checkout_a", "checkout_b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.wav").write_bytes(wav)
    prompt = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "what pitch ?"}]}]
    key = {f: example_key({"prompt": prompt, "audios": [str(tmp_path / f / "clip.wav")]}) for f in ("checkout_a", "checkout_b")}
    assert key["checkout_a"] == key["checkout_b"]
    as_dict = example_key({"prompt": prompt, "audios": [{"path": str(tmp_path / "checkout_b" / "clip.wav"), "bytes": None}]})
    assert as_dict == key["checkout_a"]
    shutil.copy(tmp_path / "checkout_a" / "clip.wav", tmp_path / "other.wav")
    with open(tmp_path / "other.wav", "ab") as f:
        f.write(b"\0\0")  # other content, other key
    assert example_key({"prompt": prompt, "audios": [str(tmp_path / "other.wav")]}) != key["checkout_a"]
