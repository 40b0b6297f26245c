"""The LLF experiments on align-anything-mini (paper Sec. 3.2 / 5: Table 2, Table 3, Fig. 5, Fig. 11), shared by
the notebooks `policy`, `llf_main`, `llf_ablation`, `llf_feedback_fraction` and their figures.

One (subtask, seed) cell:
1. `train_policy`: a tiny model of the subtask's family built from config (tokenizer trained on `mini.corpus()`),
   then SFT on mini train rows. The initial policy of the paper is an instruction-following chat model, so that it
   can act on a critique when self-improving; ours learns that from the same rows: plain examples (prompt ->
   preferred response) mixed with refinement examples (prompt, a response, that response's annotated critique in
   the upstream refinement prompt -> the preferred response; `refine_examples`).
2. `evaluate`: greedy responses to held-out prompts scored by the mini rubric judge: mean score in % of the
   maximum overall score, the share of perfect responses (every dimension 3/3), per-dimension means.
3. `dpo_binary` / `feedback_model` + `synthesize` + `dpo_llf` / `ppo_binary` / `ppo_llf`: the methods of Table 2 on
   the alignment rows (other rows than the SFT rows), synthesized sets the same size as the binary set.
4. `ablation`: Table 3's win rate of self-improved over initial responses, with a feedback model or the policy
   as its own critic, judged by `mini.judge_pair` (ties count half).
5. `respondent_scores`: the mini world's simulated respondents scored on the same held-out prompts (Fig. 11).

Sizes (`Sizes`) are chosen for the time budget of `make figures` on 2 CPU cores; smoke sizes for tests.
Image-output subtasks (t2i, ti2ti) run the same steps in aa_lib.image_llf (tiny Janus). One initial policy per
subtask (`initial_policy`, seed 0) plays the paper's pretrained chat model: every seed aligns that same model, as
the paper aligns one LLaVA / Qwen2-VL / Chameleon checkpoint. The LLF notebooks run one subtask each and loop over its
seeds with `llf_main_seed`, `ablation_seed`, `feedback_fraction_seed` (seed: alignment rows, training and sampling).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aa_lib import data, llf, mini, progress
from aa_lib.subtasks import get_subtask

# The family each subtask trains at profile tiny (the paper's families, SPEC §1; t2t has no paper column: llama).
# Image-output subtasks (t2i, ti2ti) run their cells in aa_lib.image_llf (Janus: the tiny family that decodes images).
FAMILIES = {"t2t": "llama", "ti2t": "llava", "tv2t": "qwen2_vl", "ta2t": "qwen2_audio", "t2i": "janus",
            "ti2ti": "janus"}


def family_for(subtask: str) -> str:
    name = get_subtask(subtask).name
    if name in FAMILIES:
        return FAMILIES[name]
    raise ValueError(f"{name}: the paper runs no LLF experiment on this subtask; supported: {', '.join(FAMILIES)}")


@dataclass
class Sizes:
    """How big one (subtask, seed) cell is. Defaults fit `make figures` (5 subtasks x 3 seeds, 2 jobs, 30 min, 2
    CPU cores).

    The alignment set (`n_align`) is 64 rows; every method trains the epochs it trained on the 96 rows measured
    before (DPO and reward model 2, feedback model 5, PPO a quarter of the prompts), in 2/3 of the steps.
    Measured (one seed, 1 thread, 2 runs at once on 2 cores, 96 rows): ti2t policy SFT 28 s, DPO 5.4 s (training),
    feedback model 10 s, synthesis 8 s, reward model + PPO 6 s; tv2t ~2x (its sequences are twice as long)."""

    n_sft: int = field(default=400, metadata={"help": "Mini train rows for the policy's SFT."})
    n_align: int = field(default=64, metadata={"help": "Further mini train rows: binary pairs and critiques."})
    n_heldout: int = field(default=48, metadata={"help": "Held-out prompts every policy is scored on."})
    heldout_seed: int = field(default=0, metadata={"help": "Seed of the held-out prompts (the same for every run)."})
    refine_share: float = field(default=0.5, metadata={
        "help": "Refinement examples in the policy's SFT, as a share of its plain examples."})
    sft_steps: int = field(default=100, metadata={"help": "Optimizer steps of the policy's SFT."})
    sft_lr: float = field(default=1e-3, metadata={"help": "Peak learning rate of the policy's SFT (cosine)."})
    feedback_steps: int = field(default=20, metadata={"help": "Optimizer steps of a feedback model."})
    dpo_steps: int = field(default=8, metadata={"help": "Optimizer steps of DPO (binary and LLF)."})
    reward_steps: int = field(default=8, metadata={"help": "Optimizer steps of a reward model."})
    ppo_episodes: int = field(default=16, metadata={"help": "PPO rollouts (prompts) in total."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step (SFT, feedback, DPO, RM)."})
    max_new_tokens: int = field(default=24, metadata={"help": "Longest response (policy) in tokens."})
    critique_tokens: int = field(default=40, metadata={"help": "Longest critique (feedback model) in tokens."})
    max_length: int = field(default=256, metadata={"help": "Longest training sequence in tokens."})
    gen_batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})

    @classmethod
    def smoke(cls, **kw) -> "Sizes":
        """Seconds-long sizes for tests and smoke runs (numbers mean nothing)."""
        base = dict(n_sft=16, n_align=12, n_heldout=6, sft_steps=2, feedback_steps=2, dpo_steps=1, reward_steps=1,
                    ppo_episodes=4, batch_size=4, max_new_tokens=6, critique_tokens=8, gen_batch_size=8)
        return cls(**{**base, **kw})


def _image():
    """aa_lib.image_llf: the cells of image-output subtasks (imported late: it imports this module)."""
    from aa_lib import image_llf

    return image_llf


def _quiet(**kw) -> dict:
    return dict(logging_steps=10, report_to="none", save_strategy="no", **progress.trainer_kwargs(), **kw)


# ---------------------------------------------------------------------------------------------------- data
def world_rows(subtask: str, seed: int, sizes: Sizes, root=".cache/mini"):
    """(SFT rows, alignment rows): disjoint rows of one mini train split (data seed = the run's seed). Image-output
    subtasks take at most `image_llf.ImageSizes.max_pairs` alignment rows (image synthesis is the slow part)."""
    n_align = sizes.n_align
    if not get_subtask(subtask).text_output:
        n_align = min(n_align, _image().image_sizes(sizes).max_pairs)
    ds = mini.dataset(subtask, sizes.n_sft + n_align, seed=seed, root=root)
    return ds.select(range(sizes.n_sft)), ds.select(range(sizes.n_sft, len(ds)))


@dataclass
class HeldOut:
    """Held-out prompts as generation examples, with the hidden truth (mini_meta) the rubric judges against."""

    subtask: str
    examples: list[dict]
    metas: list[str]


def heldout(subtask: str, sizes: Sizes, root=".cache/mini") -> HeldOut:
    """The held-out prompts (the mini world's `heldout` stream; prompts identical to `mini.heldout_prompts`)."""
    if not get_subtask(subtask).text_output:
        return _image().heldout(subtask, sizes, root)
    name = get_subtask(subtask).name
    ds = mini.dataset(name, sizes.n_heldout, seed=sizes.heldout_seed, split="heldout", root=root)
    conv = data.to_sft(ds)  # one prompt example per row, in row order (to_prompts would deduplicate)
    if len(conv) != len(ds):
        raise RuntimeError(f"held-out {name}: {len(ds) - len(conv)} rows lost converting to prompts")
    cols = [c for c in conv.column_names if c != "completion"]
    examples = [{c: conv[i][c] for c in cols} for i in range(len(conv))]
    return HeldOut(name, examples, list(ds["mini_meta"]))


def _set_text(message: dict, text: str) -> dict:
    if isinstance(message["content"], str):
        return {"role": message["role"], "content": text}
    return {"role": message["role"], "content": [{"type": "text", "text": text}]}


def refine_examples(ds, n: int | None = None, seed: int = 0):
    """Refinement SFT examples from annotated rows: prompt = [user x, assistant y_k, user "{critique_k}. Now, please
    refine ..."] -> the row's preferred response (y_k is either response, so correct answers learn to stay)."""
    st = get_subtask(ds.info.config_name)
    fb = data.to_feedback_sft(ds)  # two examples per row (k = 1, 2), prompt media kept
    if len(fb) != 2 * len(ds):
        raise RuntimeError(f"{st.name}: {2 * len(ds) - len(fb)} responses without a critique")
    target = data.to_sft(ds)["completion"]

    def fn(prompt, completion, idx):
        critique = completion[0]["content"] if isinstance(completion[0]["content"], str) else \
            completion[0]["content"][0]["text"]
        request = _set_text(prompt[2], llf.REFINE_TEMPLATE.format(critique=critique))
        return {"prompt": [prompt[0], prompt[1], request], "completion": target[idx // 2]}

    out = fb.map(fn, input_columns=["prompt", "completion"], with_indices=True, load_from_cache_file=False)
    if n is not None and n < len(out):
        out = out.select(np.sort(np.random.default_rng(seed).permutation(len(out))[:n]))
    return out


def policy_sft_examples(ds, refine_share: float, seed: int = 0):
    """The policy's SFT mix: plain examples of every row plus `refine_share` x as many refinement examples."""
    import datasets

    plain = data.to_sft(ds)
    n_ref = int(round(refine_share * len(plain)))
    if n_ref == 0:
        return plain
    ref = refine_examples(ds, n_ref, seed).cast(plain.features)
    return datasets.concatenate_datasets([plain, ref]).shuffle(seed=seed).flatten_indices()


# ---------------------------------------------------------------------------------------------------- models
def _corpus() -> list[str]:
    return mini.corpus() + [llf.REFINE_TEMPLATE, data.CRITIQUE_REQUEST, data.CRITIQUE_REQUEST_AUDIO]


def build_untrained(subtask: str, out_dir, seed: int) -> Path:
    """The tiny model of the subtask's family, built from config with a tokenizer trained on the mini corpus."""
    from aa_lib.models import build_tiny

    return build_tiny(family_for(subtask), out_dir, _corpus(), seed=seed)


def train_policy(subtask: str, out_dir, seed: int, sizes: Sizes, root=".cache/mini") -> dict:
    """Build and SFT the initial policy into `out_dir/untrained` and `out_dir/policy`; returns paths and timings."""
    if not get_subtask(subtask).text_output:
        return _image().train_policy(subtask, out_dir, seed, sizes, root)
    from aa_lib.train.sft import SFTConfig, train_sft

    out_dir = Path(out_dir)
    t0 = time.time()
    base = build_untrained(subtask, out_dir / "untrained", seed)
    sft_rows, _ = world_rows(subtask, seed, sizes, root)
    examples = policy_sft_examples(sft_rows, sizes.refine_share, seed)
    cfg = SFTConfig(output_dir=str(out_dir / "policy"), max_steps=sizes.sft_steps, learning_rate=sizes.sft_lr,
                    per_device_train_batch_size=sizes.batch_size, lr_scheduler_type="cosine", warmup_steps=0.05,
                    max_length=sizes.max_length, seed=seed, data_seed=seed, **_quiet())
    t1 = time.time()
    policy = train_sft(cfg, base, examples)
    return {"untrained": str(base), "policy": str(policy), "sft_examples": len(examples),
            "seconds_sft": round(time.time() - t1, 1), "seconds": round(time.time() - t0, 1)}


def load_pair(model_or_path, family: str | None = None):
    """(model, processor) from a folder, or the pair itself when already loaded."""
    from aa_lib.models import load_model

    if isinstance(model_or_path, tuple):
        return model_or_path
    return load_model(model_or_path, family=family)


# ---------------------------------------------------------------------------------------------------- judging
def max_overall(subtask: str) -> float:
    """The highest overall rubric score of a subtask (every dimension 3, weighted as `mini.WEIGHTS`)."""
    return float(sum(3 * mini.WEIGHTS.get(d.name, 1.0) for d in get_subtask(subtask).dimensions))


def score_responses(subtask: str, metas: list[str], responses: list) -> dict:
    """Rubric scores of responses to held-out prompts: score (% of the maximum overall), perfect (% of responses
    with every dimension 3/3), per-dimension means (0-3)."""
    if len(metas) != len(responses):
        raise ValueError(f"score_responses: {len(metas)} prompts vs {len(responses)} responses")
    judged = [mini.rubric_score(m, r, subtask) for m, r in zip(metas, responses)]
    top = max_overall(subtask)
    overall = np.array([j["overall"] for j in judged])
    perfect = np.array([j["overall"] == top for j in judged])
    dims = {d: float(np.mean([j["scores"][d] for j in judged])) for d in judged[0]["scores"]} if judged else {}
    return {"score": float(100 * overall.mean() / top), "perfect": float(100 * perfect.mean()),
            "overall": float(overall.mean()), "max_overall": top, "dimensions": dims, "n": len(judged),
            "scores": [float(x) for x in 100 * overall / top]}


def evaluate(model_or_path, held: HeldOut, sizes: Sizes, seed: int = 0) -> dict:
    """Greedy responses of a policy to the held-out prompts, judged by the rubric (`score_responses`), with
    a few example responses."""
    if not get_subtask(held.subtask).text_output:
        return _image().evaluate(model_or_path, held, sizes, seed)
    model, proc = load_pair(model_or_path)
    responses = llf.generate(model, proc, held.examples, llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens),
                             batch_size=sizes.gen_batch_size, seed=seed)
    out = score_responses(held.subtask, held.metas, responses)
    out["examples"] = responses[:5]
    out["responses"] = responses
    return out


def respondent_scores(held: HeldOut, seed: int = 0, answer=None) -> dict:
    """Fig. 11's "other models": each simulated respondent of the mini world answers the held-out prompts (its
    faults drawn with `seed` and the prompt index) and is scored by the same rubric. `answer(item, faults, rng,
    cfg)` writes one response (default: the respondent's text; image outputs pass their own)."""
    if answer is None and not get_subtask(held.subtask).text_output:
        return _image().respondent_scores(held, seed)
    from aa_lib.mini.respondents import RESPONDENTS, respond_text, sample_faults

    answer = answer or respond_text
    out = {}
    for k, (name, resp) in enumerate(sorted(RESPONDENTS.items())):
        answers = []
        for i, meta in enumerate(held.metas):
            item = json.loads(meta)
            rng = np.random.default_rng([seed, k, i])
            cfg = mini.make_config(**item.get("world", {}))
            answers.append(answer(item, sample_faults(resp, item, rng), rng, cfg))
        s = score_responses(held.subtask, held.metas, answers)
        out[name] = {"score": s["score"], "perfect": s["perfect"]}
    return out


# ---------------------------------------------------------------------------------------------------- methods
def _dpo_config(subtask, out, sizes: Sizes, seed: int, profile: str):
    from aa_lib.presets import make_config

    return make_config("dpo", subtask, out, profile, max_steps=sizes.dpo_steps,
                       per_device_train_batch_size=sizes.batch_size, max_length=sizes.max_length, seed=seed,
                       data_seed=seed, **_quiet())


def dpo(subtask: str, policy, pairs, out_dir, sizes: Sizes, seed: int, profile: str = "tiny") -> Path:
    """DPO from the policy on preference pairs (binary: `data.to_preference`; LLF: synthesized)."""
    if not get_subtask(subtask).text_output:
        return _image().dpo(subtask, policy, pairs, out_dir, sizes, seed, profile)
    from aa_lib.train.dpo import train_dpo

    return train_dpo(_dpo_config(subtask, out_dir, sizes, seed, profile), policy, pairs)


def feedback_steps_for(steps: int, fraction: float) -> int:
    """Steps of a feedback model trained on a `fraction` of the critiques: the same number of epochs as on all of
    them (the paper's presets count epochs, Tables 5-8), so Fig. 5's 25 % model sees its rows as often as the
    100 % model sees all rows."""
    return max(1, int(round(steps * fraction)))


def train_feedback(subtask: str, policy, align_rows, out_dir, sizes: Sizes, seed: int, fraction: float = 1.0,
                   profile: str = "tiny") -> Path:
    """A feedback model: SFT of the initial policy on the alignment rows' critiques (a `fraction` of the rows, for
    `feedback_steps_for(sizes.feedback_steps, fraction)` steps)."""
    if not get_subtask(subtask).text_output:
        return _image().train_feedback(subtask, policy, align_rows, out_dir, sizes, seed, fraction, profile)
    from aa_lib.presets import make_config

    cfg = make_config("feedback_model", subtask, out_dir, profile,
                      max_steps=feedback_steps_for(sizes.feedback_steps, fraction),
                      per_device_train_batch_size=sizes.batch_size, max_length=sizes.max_length, seed=seed,
                      data_seed=seed, learning_rate=sizes.sft_lr, **_quiet())
    return llf.train_feedback_model(cfg, policy, align_rows, fraction=fraction)


def synthesis_config(out_dir, target_size: int, sizes: Sizes, seed: int) -> llf.SynthesisConfig:
    return llf.SynthesisConfig(
        output_dir=str(out_dir), target_size=target_size, max_rounds=4, batch_size=sizes.gen_batch_size, seed=seed,
        policy_generation=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens, do_sample=True),
        feedback_generation=llf.GenerationOptions(max_new_tokens=sizes.critique_tokens),
        refine_generation=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens))


def synthesize(policy, feedback, align_rows, out_dir, target_size: int, sizes: Sizes, seed: int):
    """Synthesized pairs (chosen y*, rejected y) from the alignment prompts, `target_size` of them if possible.

    None when every item was dropped (a policy that never ends its answers, or never changes them): a result to
    report, not a crash; the reasons are in `out_dir/report.json`."""
    if not get_subtask(align_rows.info.config_name).text_output:
        return _image().synthesize(policy, feedback, align_rows, out_dir, target_size, sizes, seed)
    cfg = synthesis_config(out_dir, target_size, sizes, seed)
    try:
        return llf.synthesize_preferences(cfg, str(policy), data.to_prompts(align_rows),
                                          None if feedback is None else str(feedback))
    except ValueError as e:
        if "was dropped" not in str(e):
            raise
        return None


def synthesis_report(out_dir) -> dict:
    """What a synthesis kept and dropped (report.json without the per-item list)."""
    rep = json.loads((Path(out_dir) / "report.json").read_text())
    return {k: v for k, v in rep.items() if k != "dropped_items"}


def ppo(subtask: str, policy, reward_pairs, prompts, out_dir, sizes: Sizes, seed: int,
        profile: str = "tiny") -> tuple[Path, Path]:
    """A reward model (from the policy) on `reward_pairs`, then PPO from the policy on `prompts`."""
    if not get_subtask(subtask).text_output:
        return _image().ppo(subtask, policy, reward_pairs, prompts, out_dir, sizes, seed, profile)
    from aa_lib.presets import make_config
    from aa_lib.train.ppo import train_ppo
    from aa_lib.train.reward import load_reward_model, train_reward

    out_dir = Path(out_dir)
    rc = make_config("reward_model", subtask, out_dir / "reward", profile, max_steps=sizes.reward_steps,
                     per_device_train_batch_size=sizes.batch_size, max_length=sizes.max_length, seed=seed,
                     data_seed=seed, **_quiet())
    rm_path = train_reward(rc, policy, reward_pairs)
    reward_model, _ = load_reward_model(rm_path)
    pc = make_config("ppo", subtask, out_dir / "policy", profile, total_episodes=sizes.ppo_episodes,
                     per_device_train_batch_size=min(8, sizes.batch_size), num_mini_batches=1,
                     response_length=sizes.max_new_tokens, max_length=sizes.max_length, seed=seed, data_seed=seed,
                     **_quiet())
    return train_ppo(pc, policy, reward_model, prompts), rm_path


def ablation(policy, feedback, held: HeldOut, sizes: Sizes, seed: int) -> dict:
    """Table 3: self-improve on held-out prompts with `feedback` (None: the policy critiques itself); the win rate
    of y* over y judged by `mini.judge_pair` (ties count half), and the rubric scores of y and y*."""
    if not get_subtask(held.subtask).text_output:
        return _image().ablation(policy, feedback, held, sizes, seed)
    pol = load_pair(policy)
    fb = pol if feedback is None else load_pair(feedback)
    res = llf.self_improve(pol[0], held.examples, fb[0], processor=pol[1], feedback_processor=fb[1],
                           policy_options=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens, do_sample=True),
                           feedback_options=llf.GenerationOptions(max_new_tokens=sizes.critique_tokens),
                           refine_options=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens),
                           batch_size=sizes.gen_batch_size, seed=seed)
    ys, stars = [r["y"] for r in res], [r["y_star"] for r in res]
    wr = llf.win_rate(lambda i, a, b: mini.judge_pair(held.metas[i], a, b, held.subtask), ys, stars)
    return {**wr, "win_rate": 100 * wr["win_rate"], "changed": 100 * float(np.mean([y != s for y, s in zip(ys, stars)])),
            "score_y": score_responses(held.subtask, held.metas, ys)["score"],
            "score_y_star": score_responses(held.subtask, held.metas, stars)["score"],
            "examples": [{"y": r["y"], "c": r["c"], "y_star": r["y_star"]} for r in res[:4]]}


# ---------------------------------------------------------------------------------------------------- initial policy
def initial_policy(subtask: str, seed: int, out_dir, sizes: Sizes, held: HeldOut) -> dict:
    """Train the initial policy (the `policy` notebook); score it, the untrained model and a chance-like baseline
    (the policy's answers to other prompts)."""
    trained = train_policy(subtask, out_dir, seed, sizes)
    untrained = evaluate(trained["untrained"], held, sizes)
    initial = evaluate(trained["policy"], held, sizes)
    shifted = initial["responses"][1:] + initial["responses"][:1]
    chance = score_responses(subtask, held.metas, shifted)
    return {"subtask": subtask, "seed": seed, "family": family_for(subtask), "sizes": sizes_dict(sizes),
            "untrained": summary(untrained), "initial": summary(initial), "chance_like": summary(chance),
            "train": trained}


# ---------------------------------------------------------------------------------------------------- one seed
# The notebooks `llf_main`, `llf_ablation` and `llf_feedback_fraction` run one subtask each and loop over its seeds
# with these functions: a papermill run pays ~15 s of kernel start and imports, once for all its seeds. Seed k of a
# run works in `<run>/seed-k/`; the run's results.json holds {"per_seed": [what these return]}.
def seed_dir(out_dir, seed: int) -> Path:
    from aa_lib.runs import seed_folder

    return seed_folder(out_dir, seed)


def llf_main_seed(subtask: str, seed: int, out_dir, sizes: Sizes, held: HeldOut, respondents: dict) -> dict:
    """Table 2 for one seed: initial, DPO, DPO+LLF, PPO, PPO+LLF from the subtask's initial policy; the synthesized
    sets are as large as the binary set. `respondents`: Fig. 11's `respondent_scores`, stored beside the methods."""
    out = Path(out_dir)
    pdir, pol = policy_run(subtask)
    policy = pdir / "policy"
    _, align = world_rows(subtask, seed, sizes)
    pairs = data.to_preference(align)
    # The policy run scored this policy on the same held-out prompts (greedy, same sizes): its numbers are reused.
    methods = {"initial": pol["initial"] if pol.get("sizes") == sizes_dict(sizes) else evaluate(policy, held, sizes)}
    methods["dpo"] = evaluate(dpo(subtask, policy, pairs, out / "dpo", sizes, seed), held, sizes)
    feedback = train_feedback(subtask, policy, align, out / "feedback_model", sizes, seed)
    synth = synthesize(policy, feedback, align, out / "synthesis", len(pairs), sizes, seed)
    if synth is not None:
        methods["dpo_llf"] = evaluate(dpo(subtask, policy, synth, out / "dpo_llf", sizes, seed), held, sizes)
    prompts = data.to_prompts(align)
    ppo_path, _ = ppo(subtask, policy, data.to_reward_pairs(align), prompts, out / "ppo", sizes, seed)
    methods["ppo"] = evaluate(ppo_path, held, sizes)
    if synth is not None:
        ppo_llf_path, _ = ppo(subtask, policy, llf.to_reward_pairs(synth), prompts, out / "ppo_llf", sizes, seed)
        methods["ppo_llf"] = evaluate(ppo_llf_path, held, sizes)
    return {"subtask": subtask, "seed": seed, "family": family_for(subtask), "sizes": sizes_dict(sizes),
            "methods": {k: summary(v) for k, v in methods.items()}, "respondents": respondents,
            "initial_from_policy_run": methods["initial"] is pol.get("initial"),
            "binary_pairs": len(pairs), "synthesis": synthesis_report(out / "synthesis"),
            "feedback_model": str(feedback)}


def ablation_seed(subtask: str, seed: int, sizes: Sizes, held: HeldOut) -> dict:
    """Table 3 for one seed: self-improvement with the seed's trained feedback model (from its llf_main run) and
    with the policy as its own critic."""
    policy = policy_run(subtask)[0] / "policy"
    main_dir, _ = run_results("llf_main", seed, subtask)
    return {"subtask": subtask, "seed": seed, "sizes": sizes_dict(sizes), "ties": "count half",
            "with_feedback_model": ablation(policy, main_dir / "feedback_model", held, sizes, seed),
            "without_feedback_model": ablation(policy, None, held, sizes, seed)}


def feedback_fraction_seed(subtask: str, seed: int, out_dir, sizes: Sizes, held: HeldOut,
                           fractions=(0.25, 0.5, 0.75)) -> dict:
    """Fig. 5 for one seed: feedback models on a fraction of the critiques, each synthesizing as many pairs as the
    binary set, then DPO; BF and 100 % come from the seed's llf_main run. `relative`: score - initial score."""
    out = Path(out_dir)
    policy = policy_run(subtask)[0] / "policy"
    _, main = run_results("llf_main", seed, subtask)
    _, align = world_rows(subtask, seed, sizes)
    n_pairs = main["binary_pairs"]
    initial = main["methods"]["initial"]["score"]
    rows = [{"feedback": "BF", "fraction": None, "score": main["methods"]["dpo"]["score"], "pairs": n_pairs}]
    for f in fractions:
        fb = train_feedback(subtask, policy, align, out / f"feedback_{f}", sizes, seed, fraction=f)
        synth = synthesize(policy, fb, align, out / f"synthesis_{f}", n_pairs, sizes, seed)
        score = None if synth is None else evaluate(dpo(subtask, policy, synth, out / f"dpo_{f}", sizes, seed),
                                                    held, sizes)["score"]
        rows.append({"feedback": f"{round(100 * f)}%", "fraction": f, "score": score,
                     "pairs": 0 if synth is None else len(synth)})
    full = main["methods"].get("dpo_llf")
    rows.append({"feedback": "100%", "fraction": 1.0, "score": full["score"] if full else None,
                 "pairs": main["synthesis"]["kept"]})
    for r in rows:
        r["relative"] = None if r["score"] is None else r["score"] - initial
    return {"subtask": subtask, "seed": seed, "sizes": sizes_dict(sizes), "initial": initial, "rows": rows}


# ---------------------------------------------------------------------------------------------------- runs
def policy_run(subtask: str, runs_root=None, spec: str = "policy") -> tuple[Path, dict]:
    """(run folder, results) of the finished `policy` run of a subtask: its checkpoints are `untrained/`, `policy/`."""
    from aa_lib.runs import load_results, runs_root_default

    root = Path(runs_root or runs_root_default())
    for r in load_results(spec, root):
        if r["results"].get("subtask") == subtask:
            return root / spec / r["run"], r["results"]
    raise FileNotFoundError(f"no finished `{spec}` run for subtask={subtask} under {root}; run "
                            f"`python -m aa_lib.runs {spec}` first")


def run_results(spec: str, seed: int, subtask: str, runs_root=None) -> tuple[Path, dict]:
    """(seed folder, results) of a finished run of `spec` for (subtask, seed)."""
    from aa_lib.runs import load_seed_results

    for r in load_seed_results(spec, runs_root):
        if r["results"].get("subtask") == subtask and r["results"].get("seed") == seed:
            return r["seed_dir"], r["results"]
    raise FileNotFoundError(f"no finished `{spec}` run for subtask={subtask} seed={seed} under "
                            f"{runs_root or 'the runs root'}; run `python -m aa_lib.runs {spec}` first")


def summary(evaluation: dict) -> dict:
    """The numbers of an `evaluate` result worth saving (no per-prompt responses)."""
    return {k: evaluation[k] for k in ("score", "perfect", "overall", "max_overall", "dimensions", "n", "examples")
            if k in evaluation}


def sizes_dict(sizes: Sizes) -> dict:
    return asdict(sizes)


def experiment_sizes(smoke: bool, overrides: dict | None = None) -> Sizes:
    """The notebooks' sizes: defaults, or smoke sizes, with `overrides` (Sizes fields) on top."""
    base = Sizes.smoke() if smoke else Sizes()
    return Sizes(**{**asdict(base), **(overrides or {})})
