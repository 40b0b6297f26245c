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
   the alignment rows (other rows than the SFT rows), synthesized sets the same size as the binary set. At profile
   tiny the feedback model is the subtask's shared critic (`train_critic`, trained in the policy run on thousands of
   fresh rows' critiques); at profile paper each seed trains one on its rows' critiques.
4. `ablation`: Table 3's win rate of self-improved over initial responses, with a feedback model or the policy
   as its own critic, judged by `mini.judge_pair` (ties count half).
5. `respondent_scores`: the mini world's simulated respondents scored on the same held-out prompts (Fig. 11).

Sizes (`Sizes`, one row of `SIZES` per output kind) are chosen for the time budget of `make figures` on 2 CPU
cores; smoke sizes for tests. Every cell is written once against the subtask's policy family (`aa_lib.policies`:
text-output policies, or the tiny Janus of the image-output subtasks t2i and ti2ti). One initial policy per
subtask (`initial_policy`, seed 0) plays the paper's pretrained chat model: every seed aligns that same model, as
the paper aligns one LLaVA / Qwen2-VL / Chameleon checkpoint. The LLF notebooks run one subtask each and loop over its
seeds with `llf_main_seed`, `ablation_seed`, `feedback_fraction_seed` (seed: alignment rows, training and sampling).

Profile paper: the same cells start from the user's checkpoint (no SFT), read their align-anything rows and score
on the subtask's Table 2 benchmarks with the named judge (`aa_lib.inputs`; sizes `PAPER_SIZES`: Tables 5-8 decide
every trainer setting).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from aa_lib import data, llf, mini
from aa_lib.inputs import BenchmarkHeldOut, Inputs
from aa_lib.mini.world import COLORS, DIRECTIONS, NUMBER_WORDS, PITCHES, POSITIONS, SHAPES
from aa_lib.policies import (FAMILIES, family_for, policy_for, policy_sft_examples, refine_examples,  # noqa: F401
                             synthesis_config)
from aa_lib.subtasks import get_subtask


@dataclass
class Sizes:
    """How big one (subtask, seed) cell is: `experiment_sizes` gives the shipped ones, per output kind (`SIZES`).
    Defaults fit `make figures` (5 subtasks x 3 seeds, 2 jobs, 30 min, 2 CPU cores).

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
    reading_steps: int = field(default=0, metadata={
        "help": "Optimizer steps of the text policy's second SFT stage, which teaches it to read a critique "
                "(`policies.reading_examples`; 0: one stage)."})
    reading_samples: int = field(default=2, metadata={"help": "Sampled answers per SFT prompt in stage 2."})
    reading_media_drop: float = field(default=0.5, metadata={
        "help": "Share of stage 2's refinement examples whose prompt media are dropped."})
    reading_lr: float = field(default=5e-4, metadata={"help": "Peak learning rate of stage 2 (cosine)."})
    reading_batch_size: int | None = field(default=None, metadata={"help": "Stage 2's batch (None: batch_size)."})
    feedback_steps: int = field(default=20, metadata={"help": "Optimizer steps of a feedback model."})
    critic_rows: int = field(default=0, metadata={
        "help": "Fresh mini train rows (seed `CRITIC_SEED`) of the subtask's shared critic, trained once in the policy "
                "run and used by every seed (`train_critic`); 0: a feedback model per seed on its alignment rows."})
    critic_steps: int = field(default=600, metadata={"help": "Optimizer steps of the shared critic."})
    critic_lr: float = field(default=1e-3, metadata={"help": "Peak learning rate of the shared critic."})
    n_probe_prompts: int | None = field(default=None, metadata={
        "help": "The first held-out prompts of the self-improvement cells: Table 3, Fig. 5's DPO scores and the "
                "refinement probe (None: all `n_heldout`)."})
    feedback_lr: float = field(default=1e-3, metadata={"help": "Learning rate of a feedback model."})
    dpo_steps: int = field(default=8, metadata={"help": "Optimizer steps of DPO (binary and LLF)."})
    dpo_lr: float | None = field(default=None, metadata={
        "help": "Learning rate of DPO (None: the preset's, or the one `lr_selection` chose on the validation split)."})
    dpo_llf_lr: float | None = field(default=None, metadata={
        "help": "Learning rate of DPO on synthesized pairs (None: `dpo_lr`)."})
    dpo_lr_grid: tuple = field(default=(5e-5, 2e-4), metadata={
        "help": "DPO learning rates `lr_selection` tries on the validation split (empty: no selection)."})
    dpo_steps_grid: tuple = field(default=(), metadata={
        "help": "Longer DPO runs (optimizer steps) `lr_selection` tries at the chosen rate (empty: `dpo_steps`)."})
    dpo_llf_steps: int | None = field(default=None, metadata={
        "help": "Optimizer steps of DPO on synthesized pairs (None: `dpo_steps`, or `lr_selection`'s choice)."})
    n_validation: int = field(default=200, metadata={
        "help": "Validation prompts of `lr_selection` (mini train rows of `VALIDATION_SEED`, never held-out)."})
    reward_steps: int = field(default=8, metadata={"help": "Optimizer steps of a reward model."})
    ppo_episodes: int = field(default=16, metadata={"help": "PPO rollouts (prompts) in total."})
    ppo_lr: float | None = field(default=None, metadata={
        "help": "Learning rate of PPO's policy (None: the preset's, or the one `lr_selection` chose)."})
    ppo_lr_grid: tuple = field(default=(), metadata={
        "help": "PPO learning rates `lr_selection` tries on the validation split (empty: no selection)."})
    ppo_episodes_grid: tuple = field(default=(), metadata={
        "help": "Longer PPO runs (rollouts) `lr_selection` tries at the chosen rate (empty: `ppo_episodes`)."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step (SFT, feedback, DPO, RM)."})
    max_new_tokens: int = field(default=24, metadata={"help": "Longest response (policy; ti2ti: its text) in tokens."})
    critique_tokens: int = field(default=40, metadata={"help": "Longest critique (feedback model) in tokens."})
    max_length: int = field(default=256, metadata={"help": "Longest training sequence in tokens (text policies)."})
    gen_batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})
    vq_budget: str = field(default="tiny", metadata={
        "help": "Image policies: `image_policy.BUDGETS` entry of the shared VQ fit (and the SFT's fresh rows)."})
    ppo_prompts: int = field(default=8, metadata={"help": "Image policies: prompts per PPO iteration."})
    ppo_samples: int = field(default=2, metadata={"help": "Image policies: images sampled per PPO prompt."})


# The sizes of each output kind, at full and at smoke size (seconds-long, for tests; numbers then mean nothing): the
# fields that differ from `Sizes`' defaults.
# Image policies train from the VQ-fitted start in more, larger steps than the text policies (one code sequence per
# prompt) on `vq_budget`'s fresh rows (t2i 800, ti2ti 8000), and align on 32 rows (image synthesis is the slow part).
# Measured (seed 0, 48 held-out, greedy, 1 thread, two runs at once; % of the rubric maximum): t2i untrained 56.3;
# refine_share 0.1, 450 steps: 67.3 (SFT 146 s); 0.25, 450 steps: 62.7 (138 s). ti2ti untrained 46.2; 0.1, 500
# steps: 58.3 (SFT 198 s). 360 steps is cut from those for the 30-minute `make figures`; its scores are in the policy
# runs' results and paper_figures/table2_main_results.md. Critique uptake (16 held-out prompts; y: the canonical
# answer with one attribute wrong (t2i) or the edit not applied (ti2ti); c: the rubric's critique of y; y*: greedy
# on [x, y, c]): the named attribute is right in y* t2i 31% (0.1) / 44% (0.25), ti2ti 44% (0.1), against 0% in y
# and 50% / 25% / 62% in the plain greedy answer to x: the refinement prompt does not make the policy fix what the
# critique names more than it does unprompted. A full-size ti2ti llf_main cell took 85 s (DPO 21, PPO 20, feedback
# 17, synthesis 15, evaluations 12); an llf_feedback_fraction cell (3 fractions) 312 s on a more loaded machine.
# The text policies (the testbed of the llf_mechanism figure): SFT in two stages, 300 plain steps on the rows' prompts
# -> the reference with `policies.INITIAL_POLICY_FAULTS`, then 1,200 steps that teach reading a critique
# (`policies.reading_examples`, media dropped on every one). Measured on ti2t (seed 0, 200 held-out prompts, y*
# refined from a sampled y, points over the greedy answer): 600 steps with half the media dropped (lr 5e-4) or all
# of them (lr 5e-4 or 1e-3): the oracle critique changes nothing (+0.6 / -0.6 / -0.6, as a generic critique); 1,200
# steps at 1e-3 with all dropped: oracle +9.6 to +16 (fixes 32-49 % of wrong answers), generic +2.0 to +3.8; tv2t:
# oracle +18 (60 %), generic +1.9. Then DPO (8 steps) on 64 pairs synthesized with the oracle critique moved the
# greedy answer by +3.3 / +5.4 points at lr 5e-5 / 2e-4 (ti2t), +0.3 / +2.6 (tv2t); on the binary pairs +0.2 / +2.2
# and +0.5 / +1.7 (one seed, 300 held-out prompts).
# The shared critic (`train_critic`, text): 300 steps (lr 1e-3, batch 16) on 2,000 rows' (x, policy sample, rubric
# critique), critique_tokens 64 (40 cut the oracle's multi-issue critiques). Measured at 600 steps on ti2t (seed 0, 200
# held-out prompts, `refinement_probe`): 84.5 % well-formed critiques (the per-seed feedback model of 20 steps on 64
# rows: 0 %), 94.5 % agreement with the rubric on whether there is an issue, the right value named 15.2 % of the time
# (the policy's greedy answer says it 11.1 %), y* +5.4 points over the greedy answer (generic critique +3.8, oracle
# +16.0); 1,000 rows / 300 steps: 83.0 %, 94.5 %, 11.7 %, +4.0. The shipped 300 steps on the 2,000 rows halve its
# training for the time budget (ti2t seed 0, the first 100 held-out prompts: 82 %, 96 %, 11.6 %, +4.7 against 600 steps'
# 83 %, 96 %, 17.4 %, +5.0; tv2t 89 %, 89 %, 22.2 %, +7.7 against 88 %, 95 %, 28.4 %, +6.9). A critic started from the
# plain stage-1 policy (which kept its media) was compared on the validation split (100 prompts, 2 seeds): ti2t right
# value 18-21 % vs 13-15 %, y* +2.9 / +3.6 vs +2.9 / +2.9; tv2t 17-21 % vs 24-27 %, +2.6 / +1.9 vs +4.7 / +3.7: no clear
# gain, so the critic starts from the final policy. Image critics learn from the rows' annotated critiques (400 rows,
# 100 steps). The self-improvement cells (Table 3, Fig. 5, the refinement probe) score the first 100 of the 300 held-out
# prompts (`n_probe_prompts`): they run the policy three times per prompt and critic.
# Statistics: 300 held-out prompts for every subtask (a paired interval over prompts x seeds); greedy images of 300
# prompts take 1.9 s (t2i, 2 threads), so the image subtasks score as many as the text ones. Text PPO: 48 rollouts
# (6 updates at batch 8) instead of 16 (2, the first at warm-up lr 0). Rates and lengths are chosen on the validation
# split for every subtask: `lr_selection` tries each rate of the grids, then 16 DPO steps and 96 (text) / 48 (image)
# PPO rollouts at the best rate beside the default 8 steps and 48 / 16 rollouts (t2i's whole sweep: 60 s, 2 threads).
TEXT_POLICY = dict(refine_share=0.0, sft_steps=300, reading_steps=1200, reading_lr=1e-3, reading_media_drop=1.0,
                   reading_samples=1, critic_rows=2000, critic_steps=300, critique_tokens=64, n_probe_prompts=100,
                   ppo_lr_grid=(1e-4, 3e-4, 1e-3), dpo_steps_grid=(16,), ppo_episodes_grid=(96,))
SIZES = {
    ("text", False): dict(n_heldout=300, ppo_episodes=48, **TEXT_POLICY),
    ("text", True): dict(n_sft=16, n_align=12, n_heldout=6, n_validation=4, sft_steps=2, feedback_steps=2,
                         dpo_steps=1, reward_steps=1, ppo_episodes=4, batch_size=4, max_new_tokens=6,
                         critique_tokens=8, gen_batch_size=8, refine_share=0.0, reading_steps=2, reading_samples=1,
                         reading_media_drop=0.5, critic_rows=8, critic_steps=2, ppo_lr_grid=(1e-4, 1e-3),
                         dpo_steps_grid=(2,), ppo_episodes_grid=(8,)),
    ("image", False): dict(n_align=32, n_heldout=300, n_probe_prompts=100, refine_share=0.1, sft_steps=360,
                           sft_lr=5e-3, critic_rows=400, critic_steps=100, ppo_lr_grid=(1e-4, 3e-4, 1e-3),
                           dpo_steps_grid=(16,), ppo_episodes_grid=(48,)),
    ("image", True): dict(n_sft=16, n_align=6, n_heldout=4, n_validation=4, sft_steps=2, sft_lr=5e-3,
                          feedback_steps=2, dpo_steps=1, reward_steps=1, ppo_episodes=2, ppo_prompts=2, batch_size=4,
                          max_new_tokens=4, critique_tokens=8, gen_batch_size=8, vq_budget="smoke", critic_rows=4,
                          critic_steps=2, ppo_lr_grid=(1e-4, 1e-3), dpo_steps_grid=(2,), ppo_episodes_grid=(4,)),
}
# Profile paper: the checkpoint is aligned as it is (no SFT), on every row of the user's data, scored on every item
# of the benchmarks; None leaves a trainer's steps, batch, learning rate and length to Tables 5-8
# (`presets.make_config`). The responses' lengths are the paper's generation budgets.
PAPER_SIZES = dict(n_sft=0, n_align=None, n_heldout=None, feedback_steps=None, feedback_lr=None, dpo_steps=None,
                   critic_rows=0, n_probe_prompts=None, dpo_lr_grid=(), reward_steps=None, ppo_episodes=None,
                   batch_size=None, max_length=None, max_new_tokens=512, critique_tokens=512, gen_batch_size=8)
PAPER_SMOKE = dict(n_align=8, n_heldout=4, feedback_steps=1, dpo_steps=1, reward_steps=1, ppo_episodes=4, batch_size=2,
                   max_length=256, max_new_tokens=8, critique_tokens=8)  # the rehearsal's tests: seconds per stage


def experiment_sizes(smoke: bool, overrides: dict | None = None, subtask: str = "t2t", profile: str = "tiny") -> Sizes:
    """The notebooks' sizes for a subtask: its output kind's row of `SIZES` (profile paper: `PAPER_SIZES`), with
    `overrides` (Sizes fields) on top."""
    kind = "text" if get_subtask(subtask).text_output else "image"
    base = {**PAPER_SIZES, **(PAPER_SMOKE if smoke else {})} if profile == "paper" else SIZES[kind, bool(smoke)]
    return Sizes(**{**base, **(overrides or {})})


# ---------------------------------------------------------------------------------------------------- data
def world_rows(subtask: str, seed: int, sizes: Sizes, root=".cache/mini", inputs: Inputs | None = None):
    """(SFT rows, alignment rows): disjoint rows of one mini train split (data seed = the run's seed); with
    `inputs.data` (profile paper), no SFT rows and the user's align-anything rows, shuffled with the seed (`n_align`
    of them when set), whose critiques train the feedback model and whose preferences are the binary pairs."""
    if inputs is not None and inputs.data:
        ds = data.load(inputs.data, subtask, media_root=inputs.media_root, column_map=inputs.column_map)
        ds = ds.shuffle(seed=seed)
        return ds.select([]), ds.select(range(min(sizes.n_align or len(ds), len(ds))))
    ds = mini.dataset(subtask, sizes.n_sft + sizes.n_align, seed=seed, root=root)
    return ds.select(range(sizes.n_sft)), ds.select(range(sizes.n_sft, len(ds)))


@dataclass
class HeldOut:
    """Held-out prompts as generation examples, with the hidden truth (mini_meta) the rubric judges against.
    Profile paper: `inputs.BenchmarkHeldOut`, the same `score` and `judge_pair` over the Table 2 benchmarks."""

    subtask: str
    examples: list[dict]
    metas: list[str]

    def score(self, responses: list) -> dict:
        return score_responses(self.subtask, self.metas, responses)

    judge_name = "mini.judge_pair (ties half)"

    @classmethod
    def of_rows(cls, rows) -> "HeldOut":
        """Mini rows as prompts to score: one generation prompt per row, in row order (to_prompts would
        deduplicate), with the rows' hidden truth."""
        name = get_subtask(rows.info.config_name).name
        fam = policy_for(name)
        conv = data.to_sft(rows)
        if len(conv) != len(rows):
            raise RuntimeError(f"{name}: {len(rows) - len(conv)} rows lost converting to prompts")
        return cls(name, [fam.prompt_example(conv[i]) for i in range(len(conv))], list(rows["mini_meta"]))

    def judge_pair(self, i: int, a, b):
        return mini.judge_pair(self.metas[i], a, b, self.subtask)


def heldout(subtask: str, sizes: Sizes, root=".cache/mini", inputs: Inputs | None = None):
    """The held-out prompts (the mini world's `heldout` stream; prompts identical to `mini.heldout_prompts`), or
    with `inputs.benchmarks` (profile paper) the benchmarks' items, judged with replies cached in `judge_cache()`."""
    name = get_subtask(subtask).name
    if inputs is not None and inputs.benchmarks:
        return BenchmarkHeldOut(name, inputs, judge_cache(), sizes.n_heldout)
    return HeldOut.of_rows(mini.dataset(name, sizes.n_heldout, seed=sizes.heldout_seed, split="heldout", root=root))


VALIDATION_SEED = 1000  # the mini train rows of the validation split (alignment seeds are 0, 1, 2)


def validation_split(subtask: str, sizes: Sizes, root=".cache/mini") -> tuple:
    """(alignment rows, prompts to score): the validation split that settings are chosen on, mini train rows of
    `VALIDATION_SEED`, disjoint from every seed's rows and from the held-out stream."""
    name = get_subtask(subtask).name
    ds = mini.dataset(name, sizes.n_align + sizes.n_validation, seed=VALIDATION_SEED, root=root)
    return ds.select(range(sizes.n_align)), HeldOut.of_rows(ds.select(range(sizes.n_align, len(ds))))


SELECTED = ("dpo_lr", "dpo_llf_lr", "ppo_lr", "dpo_steps", "dpo_llf_steps", "ppo_episodes")  # what lr_selection sets


def lr_selection(subtask: str, out_dir, sizes: Sizes, profile: str = "tiny") -> dict:
    """DPO's and PPO's learning rate and length, chosen on the validation split, never on held-out prompts.

    DPO of the initial policy on the validation rows' binary pairs (-> `dpo_lr`, `dpo_steps`: DPO, DPO shuffled) and
    on pairs synthesized from them with the oracle critic (-> `dpo_llf_lr`, `dpo_llf_steps`: every arm on synthesized
    pairs); PPO with a reward model on the validation rows' pairs (-> `ppo_lr`, `ppo_episodes`: PPO and PPO+LLF). A
    coordinate search: each rate of the lr grid at the sizes' length, then the lengths of `dpo_steps_grid` /
    `ppo_episodes_grid` at the best rate; each run is scored on the validation prompts, the best mean score wins (a tie:
    the earlier, shorter run). Returns the sweep and the choices (the sizes' own where there is no grid, and at
    profile paper, where the presets decide)."""
    own = {k: getattr(sizes, k) for k in SELECTED}
    grids = (sizes.dpo_lr_grid, sizes.ppo_lr_grid, sizes.dpo_steps_grid, sizes.ppo_episodes_grid)
    if profile != "tiny" or not any(grids):
        return {**own, "sweep": []}
    policy, _ = initial_checkpoint(subtask, profile)
    rows, val = validation_split(subtask, sizes)
    out = Path(out_dir)
    binary = data.to_preference(rows)
    synth = synthesize(policy, oracle_for_rows(rows), rows, out / "synthesis_oracle", len(binary), sizes,
                       VALIDATION_SEED)
    sweep = []

    def best(method, pairs):
        rows_ = [r for r in sweep if r["method"] == method and r["pairs"] == pairs]
        return max(rows_, key=lambda r: r["validation_score"]) if rows_ else None

    def run_dpo(pairs_name, pairs, lr, steps):
        trial = replace(sizes, dpo_lr=lr, dpo_steps=steps)
        model = dpo(subtask, policy, pairs, out / f"{pairs_name}-lr-{lr:g}-steps-{steps}", trial, VALIDATION_SEED,
                    profile)
        sweep.append({"method": "dpo", "pairs": pairs_name, "lr": lr, "steps": steps, "n_pairs": len(pairs),
                      "validation_score": evaluate(model, val, trial)["score"]})

    def run_ppo(lr, episodes):
        trial = replace(sizes, ppo_lr=lr, ppo_episodes=episodes)
        model, _ = ppo(subtask, policy, data.to_reward_pairs(rows), data.to_prompts(rows),
                       out / f"ppo-lr-{lr:g}-rollouts-{episodes}", trial, VALIDATION_SEED, profile)
        sweep.append({"method": "ppo", "pairs": "binary", "lr": lr, "rollouts": episodes,
                      "validation_score": evaluate(model, val, trial)["score"]})

    for pairs_name, pairs, lr in (("binary", binary, sizes.dpo_lr), ("synthesized", synth, sizes.dpo_llf_lr)):
        if pairs is None:
            continue
        for rate in sizes.dpo_lr_grid:
            run_dpo(pairs_name, pairs, rate, sizes.dpo_steps)
        rate = best("dpo", pairs_name)["lr"] if sizes.dpo_lr_grid else lr or sizes.dpo_lr
        for steps in sizes.dpo_steps_grid:
            run_dpo(pairs_name, pairs, rate, steps)
    for rate in sizes.ppo_lr_grid:
        run_ppo(rate, sizes.ppo_episodes)
    for episodes in sizes.ppo_episodes_grid:
        run_ppo(best("ppo", "binary")["lr"] if sizes.ppo_lr_grid else sizes.ppo_lr, episodes)
    chosen = dict(own)
    for (lr_key, length_key, length), (method, pairs) in (
            (("dpo_lr", "dpo_steps", "steps"), ("dpo", "binary")),
            (("dpo_llf_lr", "dpo_llf_steps", "steps"), ("dpo", "synthesized")),
            (("ppo_lr", "ppo_episodes", "rollouts"), ("ppo", "binary"))):
        if (b := best(method, pairs)) is not None:
            chosen[lr_key], chosen[length_key] = b["lr"], b[length]
    return {**chosen, "sweep": sweep, "validation_initial": evaluate(policy, val, sizes)["score"],
            "prompts": len(val.metas)}


def with_selection(sizes: Sizes, selection: dict) -> Sizes:
    """`sizes` with the learning rates and lengths `lr_selection` chose."""
    return replace(sizes, **{k: selection[k] for k in SELECTED})


def llf_dpo_sizes(sizes: Sizes) -> Sizes:
    """The sizes of DPO on synthesized pairs: `dpo_llf_lr` and `dpo_llf_steps` as DPO's (when set)."""
    return replace(sizes, dpo_lr=sizes.dpo_llf_lr or sizes.dpo_lr, dpo_steps=sizes.dpo_llf_steps or sizes.dpo_steps)


def cell_inputs(profile: str, params: dict | None) -> Inputs:
    """The notebook parameter `inputs` as `Inputs`; profile paper needs at least the checkpoint and the data."""
    inputs = Inputs.of(params)
    if profile == "paper" and not (inputs.policy and inputs.data):
        raise ValueError("profile paper needs the subtask's checkpoint and data in `inputs`: run it with "
                         "`python -m aa_lib.runs SPEC --profile paper --inputs paths.yaml` (see aa_lib.inputs)")
    return inputs


def judge_cache() -> Path:
    """Where judges cache their replies across runs (a rerun asks nothing it asked before): the runs root."""
    from aa_lib.runs import runs_root_default

    return Path(runs_root_default()) / ".judge_cache"


# ---------------------------------------------------------------------------------------------------- models
def build_untrained(subtask: str, out_dir, seed: int, sizes: Sizes | None = None) -> Path:
    """The subtask's untrained policy (`policies.TextPolicy.start` / `ImagePolicy.start`)."""
    return policy_for(subtask).start(subtask, out_dir, seed, sizes or experiment_sizes(False, subtask=subtask))


def train_policy(subtask: str, out_dir, seed: int, sizes: Sizes, root=".cache/mini") -> dict:
    """Build and SFT the initial policy into `out_dir/untrained` and `out_dir/policy`; returns paths and timings."""
    fam = policy_for(subtask)
    out_dir = Path(out_dir)
    t0 = time.time()
    base = fam.start(subtask, out_dir / "untrained", seed, sizes)
    sft_rows, _ = world_rows(subtask, seed, sizes, root)
    examples = fam.sft_examples(subtask, sft_rows, sizes, seed)
    t1 = time.time()
    policy = fam.train_sft(base, examples, out_dir / ("plain" if sizes.reading_steps else "policy"), sizes, seed)
    out = {"untrained": str(base), "policy": str(policy), "sft_examples": len(examples),
           "seconds_sft": round(time.time() - t1, 1)}
    if sizes.reading_steps:
        t2 = time.time()
        out["plain"], out["policy"] = str(policy), str(fam.train_reading(policy, sft_rows, out_dir / "policy", sizes,
                                                                          seed))
        out["seconds_reading"] = round(time.time() - t2, 1)
    if sizes.critic_rows:
        t3 = time.time()
        out["critic"] = str(train_critic(subtask, out["policy"], out_dir / CRITIC, sizes, seed, root))
        out["seconds_critic"] = round(time.time() - t3, 1)
    return {**out, "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------------- shared critic
CRITIC = "critic"  # the policy run's folder of the shared critic: examples/ (its training set) and model/
CRITIC_SEED = 2000  # the mini train rows of the shared critic (alignment seeds 0-2, validation 1000)


def critic_sizes(sizes: Sizes) -> Sizes:
    """A feedback model's sizes with the shared critic's steps and learning rate."""
    return replace(sizes, feedback_steps=sizes.critic_steps, feedback_lr=sizes.critic_lr)


def train_critic(subtask: str, policy, out_dir, sizes: Sizes, seed: int, root=".cache/mini") -> Path:
    """The subtask's shared critic (feedback model), trained once beside the initial policy and used by every seed,
    as the paper's feedback model is trained once on far more feedback than one alignment run holds: SFT of the
    policy on `critic_rows` fresh mini rows' (x, y, c) (`critic_examples` of the policy family; text: the policy's
    own samples with the rubric's critiques), saved under `out_dir/examples` for Fig. 5's fraction critics."""
    fam = policy_for(subtask)
    out = Path(out_dir)
    rows = mini.dataset(get_subtask(subtask).name, sizes.critic_rows, seed=CRITIC_SEED, root=root)
    examples = fam.critic_examples(fam.load(policy), rows, sizes, seed)
    examples.save_to_disk(str(out / "examples"))
    return train_feedback(subtask, policy, examples, out / "model", critic_sizes(sizes), seed)


def shared_critic(subtask: str, profile: str = "tiny") -> Path | None:
    """The shared critic of the subtask's policy run (`train_critic`), or None (none trained: a feedback model per
    seed, as at profile paper)."""
    pdir, _ = policy_run(subtask, profile=profile)
    model = pdir / CRITIC / "model"
    return model if model.exists() else None


def fraction_critics(subtask: str, out_dir, sizes: Sizes, fractions, profile: str = "tiny") -> dict:
    """Fig. 5's feedback models when the subtask has a shared critic: critics on a fraction of its examples, for the
    same epochs (`feedback_steps_for`), trained once per subtask like it; {} without a shared critic (each seed then
    trains its own on a fraction of its alignment rows)."""
    import datasets

    if shared_critic(subtask, profile) is None:
        return {}
    pdir, pol = policy_run(subtask, profile=profile)
    examples = datasets.load_from_disk(str(pdir / CRITIC / "examples"))
    return {f: train_feedback(subtask, pdir / "policy", examples, Path(out_dir) / f"critic_{f}", critic_sizes(sizes),
                              pol["seed"], fraction=f, profile=profile) for f in fractions}


def probe_prompts(held, sizes: Sizes):
    """The first `n_probe_prompts` held-out prompts (the self-improvement cells'), or all of them."""
    n = sizes.n_probe_prompts
    if n is None or not isinstance(held, HeldOut) or n >= len(held.metas):
        return held
    return HeldOut(held.subtask, held.examples[:n], held.metas[:n])


def head_score(result: dict, n: int | None) -> float:
    """A summary's score over its first `n` prompts (None: its score), from the per-prompt scores."""
    return result["score"] if n is None or n >= len(result["scores"]) else float(np.mean(result["scores"][:n]))


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
    a few example responses (`examples`: as the family shows them; `responses`: all of them, not saved)."""
    fam = policy_for(held.subtask)
    responses = fam.respond(fam.load(model_or_path), held.subtask, held.examples, sizes, seed)
    out = held.score(responses)
    out["examples"] = [fam.show(r) for r in responses[:5]]
    out["responses"] = responses
    return out


def respondent_scores(held: HeldOut, seed: int = 0) -> dict:
    """Fig. 11's "other models": each simulated respondent of the mini world answers the held-out prompts (its
    faults drawn with `seed` and the prompt index; the policy family's `answer` writes a text or a drawing) and is
    scored by the same rubric."""
    from aa_lib.mini.respondents import RESPONDENTS, sample_faults

    if not isinstance(held, HeldOut):
        return {}  # profile paper: the mini world's respondents answer only mini prompts
    answer = policy_for(held.subtask).answer
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
def dpo(subtask: str, policy, pairs, out_dir, sizes: Sizes, seed: int, profile: str = "tiny") -> Path:
    """DPO from the policy on preference pairs (binary: `data.to_preference`; LLF: synthesized)."""
    return policy_for(subtask).dpo(subtask, policy, pairs, out_dir, sizes, seed, profile)


def feedback_steps_for(steps: int | None, fraction: float) -> int | None:
    """Steps of a feedback model trained on a `fraction` of the critiques: the same number of epochs as on all of
    them (the paper's presets count epochs, Tables 5-8), so Fig. 5's 25 % model sees its rows as often as the
    100 % model sees all rows. None (profile paper): the preset's epochs, which already count that way."""
    return None if steps is None else max(1, int(round(steps * fraction)))


def train_feedback(subtask: str, policy, align_rows, out_dir, sizes: Sizes, seed: int, fraction: float = 1.0,
                   profile: str = "tiny") -> Path:
    """A feedback model: SFT of the initial policy on the alignment rows' critiques (a `fraction` of the rows, for
    `feedback_steps_for(sizes.feedback_steps, fraction)` steps), loss on the critique only; an image response is
    read through Janus's understanding path."""
    from aa_lib.policies import quiet
    from aa_lib.presets import make_config

    cfg = make_config("feedback_model", subtask, out_dir, profile,
                      max_steps=feedback_steps_for(sizes.feedback_steps, fraction),
                      per_device_train_batch_size=sizes.batch_size, seed=seed, data_seed=seed,
                      learning_rate=sizes.feedback_lr, **policy_for(subtask).trainer_kw(sizes), **quiet())
    return llf.train_feedback_model(cfg, policy, align_rows, fraction=fraction)


def synthesize(policy, feedback, align_rows, out_dir, target_size: int, sizes: Sizes, seed: int):
    """Synthesized pairs (chosen y*, rejected y) from the alignment prompts, `target_size` of them if possible.

    None when every item was dropped (a policy that never ends its answers, or never changes them): a result to
    report, not a crash; the reasons are in `out_dir/report.json`."""
    fam = policy_for(align_rows.info.config_name)
    return fam.synthesize(policy, feedback, align_rows, out_dir, target_size, sizes, seed)


def synthesis_report(out_dir) -> dict:
    """What a synthesis kept and dropped (report.json without the per-item list)."""
    rep = json.loads((Path(out_dir) / "report.json").read_text())
    return {k: v for k, v in rep.items() if k != "dropped_items"}


def ppo(subtask: str, policy, reward_pairs, prompts, out_dir, sizes: Sizes, seed: int,
        profile: str = "tiny") -> tuple[Path, Path]:
    """A reward model (from the policy) on `reward_pairs`, then PPO from the policy on `prompts`; returns (policy
    folder, reward model folder)."""
    return policy_for(subtask).ppo(subtask, policy, reward_pairs, prompts, out_dir, sizes, seed, profile)


def ablation(policy, feedback, held: HeldOut, sizes: Sizes, seed: int) -> dict:
    """Table 3: self-improve on held-out prompts with `feedback` (None: the policy critiques itself); the win rate
    of y* over the policy's greedy answer judged by `mini.judge_pair` (ties count half), the share of responses y*
    changed, and the rubric scores of y, the greedy answer and y*."""
    fam = policy_for(held.subtask)
    pol = fam.load(policy)
    fb = pol if feedback is None else fam.load(feedback)
    res = fam.improve(pol, fb, held.subtask, held.examples, sizes, seed)
    ys, stars = [r["y"] for r in res], [r["y_star"] for r in res]
    # y* against the policy's greedy answer, not against the sampled y it refined: a greedy y* beats a temperature-1
    # y by decoding alone, which is not a feedback effect.
    greedy = fam.respond(pol, held.subtask, held.examples, sizes, seed)
    wr = llf.win_rate(held.judge_pair, greedy, stars)
    return {**wr, "win_rate": 100 * wr["win_rate"], "judge": held.judge_name, "against": "greedy answer",
            "changed": 100 * float(np.mean([not fam.same(y, s) for y, s in zip(ys, stars)])),
            "score_y": held.score(ys)["score"], "score_greedy": held.score(greedy)["score"],
            "score_y_star": held.score(stars)["score"],
            "examples": [{"y": fam.show(r["y"]), "c": r["c"], "y_star": fam.show(r["y_star"])} for r in res[:4]]}


# ---------------------------------------------------------------------------------------------------- controls, probes
GENERIC_CRITIQUE = "##Critique: the response has a problem . ##Refinement: fix this ."
NO_ISSUE = "the response is correct"  # how the rubric's critique (and a feedback model trained on it) says "no issue"


@dataclass
class Critic:
    """A critic that is not a model (`llf.is_critic`): the mini rubric's own critique of each response (`oracle`:
    what LLF gives when the critic is right), or one fixed text for every response (the generic and no-critique
    probes)."""

    name: str
    subtask: str
    metas: dict = field(default_factory=dict)  # prompt example key -> mini_meta
    text: str | None = None

    @classmethod
    def oracle(cls, subtask: str, examples: list[dict], metas: list[str]) -> "Critic":
        return cls("mini rubric (oracle)", subtask, {llf.example_key(e): m for e, m in zip(examples, metas)})

    def critique(self, examples: list[dict], responses: list) -> list[str]:
        if self.text is not None:
            return [self.text] * len(responses)
        return [mini.rubric_score(self.metas[llf.example_key(e)], y, self.subtask)["critique"]
                for e, y in zip(examples, responses)]


def oracle_for_rows(rows) -> Critic:
    """The oracle critic of mini rows' prompts (keyed as the families key their generation prompts)."""
    held = HeldOut.of_rows(rows)
    return Critic.oracle(held.subtask, held.examples, held.metas)


def shuffled_pairs(pairs, seed: int):
    """The negative control: binary pairs with chosen and rejected swapped on a seeded coin flip per pair."""
    flip = np.random.default_rng([seed, 31]).random(len(pairs)) < 0.5
    img = "chosen_images" in pairs.column_names

    def fn(ex, i):
        if not flip[i]:
            return ex
        out = {**ex, "chosen": ex["rejected"], "rejected": ex["chosen"]}
        if img:
            out["chosen_images"], out["rejected_images"] = ex["rejected_images"], ex["chosen_images"]
        return out

    return pairs.map(fn, with_indices=True, load_from_cache_file=False)


VALUE_WORDS = frozenset([*COLORS, *SHAPES, *POSITIONS, *DIRECTIONS, *PITCHES, *NUMBER_WORDS[1:]])


def fix_values(critique: str) -> set[str]:
    """The attribute values a critique's refinement names (`##Refinement: name the shape : circle .`)."""
    tail = critique.split("##Refinement:", 1)[1] if "##Refinement:" in critique else ""
    return {t for t in tail.replace(".", " ").split() if t in VALUE_WORDS}


def _words(response_shown) -> set[str]:
    return set(json.dumps(response_shown).replace('"', " ").replace(",", " ").replace(":", " ").split())


def refinement_probe(policy, held: HeldOut, sizes: Sizes, seed: int, feedback=None) -> dict:
    """Probes (a) and (b) on held-out prompts. (a) y sampled from the policy, then y* greedy on [x, y, c] for four
    critics: the rubric's own critique (`oracle`), a generic one, none (an empty critique) and the trained feedback
    model (`trained`); per critic the fix rate (imperfect y -> perfect y*), keep rate (perfect y stays perfect), and
    the scores of y* and of the greedy answer. (b) the trained critic: finished and well-formed critiques,
    agreement with the rubric on whether y has an issue, how often its refinement names the values the rubric's
    names, beside how often the policy's greedy answer already says them."""
    fam = policy_for(held.subtask)
    pol = fam.load(policy)
    greedy = fam.respond(pol, held.subtask, held.examples, sizes, seed)
    ys = fam.sample(pol, held.subtask, held.examples, sizes, seed)
    s_y, s_greedy = held.score(ys)["scores"], held.score(greedy)["scores"]
    y_ok = np.array([v >= 100 for v in s_y])
    critics = {"oracle": Critic.oracle(held.subtask, held.examples, held.metas),
               "generic": Critic("generic", held.subtask, text=GENERIC_CRITIQUE),
               "none": Critic("none", held.subtask, text="")}
    if feedback is not None:
        critics["trained"] = fam.load(feedback)
    keys = [f"{llf.example_key(e)}#{i}:c" for i, e in enumerate(held.examples)]
    opts = llf.GenerationOptions(max_new_tokens=sizes.critique_tokens)
    out, texts = {"n": len(ys), "score_y": float(np.mean(s_y)), "score_greedy": float(np.mean(s_greedy)),
                  "perfect_y": float(100 * y_ok.mean()), "critics": {}}, {}
    for name, critic in critics.items():
        model, proc = (critic, None) if llf.is_critic(critic) else critic
        cs = llf.critiques(model, proc, held.examples, ys, opts, sizes.gen_batch_size, seed, keys,
                           fam.critique_prompt)
        texts[name] = cs
        stars = fam.refine(pol, held.subtask, held.examples, ys, [c.text for c in cs], sizes, seed)
        s_star = np.array(held.score(stars)["scores"])
        ok = s_star >= 100
        out["critics"][name] = {
            "fix_rate": float(100 * ok[~y_ok].mean()) if (~y_ok).any() else None,
            "keep_rate": float(100 * ok[y_ok].mean()) if y_ok.any() else None,
            "score_y_star": float(s_star.mean()), "y_star_minus_greedy": float(s_star.mean() - np.mean(s_greedy)),
            "example": {"y": fam.show(ys[0]), "c": cs[0].text, "y_star": fam.show(stars[0])}}
    if "trained" in texts:
        oracle = [c.text for c in texts["oracle"]]
        mine = texts["trained"]
        says_ok = np.array([NO_ISSUE in c.text for c in mine])
        named = [(fix_values(o), fix_values(c.text), _words(fam.show(g))) for o, c, g in zip(oracle, mine, greedy)]
        with_values = [(o, c, g) for o, c, g in named if o]
        out["critic"] = {
            "finished": float(100 * np.mean([c.finished for c in mine])),
            "well_formed": float(100 * np.mean([c.finished and "##Critique:" in c.text and "##Refinement:" in c.text
                                                for c in mine])),
            "issue_agreement": float(100 * np.mean(says_ok == y_ok)),
            "names_right_value": float(100 * np.mean([o <= c for o, c, _ in with_values])) if with_values else None,
            "policy_says_value": float(100 * np.mean([o <= g for o, _, g in with_values])) if with_values else None,
            "items_with_values": len(with_values)}
    return out


def dpo_log(model_dir) -> list[dict]:
    """Probe (d): a DPO run's logged steps: reward margin, chosen / rejected log-probs, loss."""
    from aa_lib.train.common import LOG_HISTORY

    path = Path(model_dir) / LOG_HISTORY
    keep = ("step", "loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")
    return [{k: h[k] for k in keep if k in h} for h in json.loads(path.read_text()) if "loss" in h] \
        if path.exists() else []


def pair_agreement(pairs, oracle: Critic) -> dict:
    """Probe (c): the share of preference pairs whose chosen response the rubric scores higher (ties apart)."""
    fam = policy_for(oracle.subtask)
    better = ties = 0
    for ex in pairs:
        meta = oracle.metas[llf.example_key(fam.prompt_example({"prompt": ex["prompt"], **{
            c: ex[c] for c in llf.MEDIA_COLUMNS if c in ex}}))]
        a, b = (fam.pair_response(ex, side) for side in ("chosen", "rejected"))
        sa, sb = (mini.rubric_score(meta, r, oracle.subtask)["overall"] for r in (a, b))
        better += sa > sb
        ties += sa == sb
    n = len(pairs)
    d = max(n, 1)
    return {"n": n, "agree": float(100 * better / d), "ties": float(100 * ties / d),
            "disagree": float(100 * (n - better - ties) / d)}


# ---------------------------------------------------------------------------------------------------- initial policy
def initial_policy(subtask: str, seed: int, out_dir, sizes: Sizes, held: HeldOut, inputs: Inputs | None = None
                   ) -> dict:
    """Train the initial policy (the `policy` notebook); score it, the untrained model and a chance-like baseline
    (the policy's answers to other prompts). With `inputs.policy` (profile paper) the checkpoint is the initial
    policy as it is (`checkpoint`), scored on the benchmarks."""
    head = {"subtask": subtask, "seed": seed, "family": family_for(subtask), "sizes": sizes_dict(sizes)}
    if inputs is not None and inputs.policy:
        return {**head, "checkpoint": inputs.policy, "initial": summary(evaluate(inputs.policy, held, sizes))}
    trained = train_policy(subtask, out_dir, seed, sizes)
    untrained = evaluate(trained["untrained"], held, sizes)
    initial = evaluate(trained["policy"], held, sizes)
    shifted = initial["responses"][1:] + initial["responses"][:1]
    chance = score_responses(subtask, held.metas, shifted)
    return {**head, "untrained": summary(untrained), "initial": summary(initial), "chance_like": summary(chance),
            "train": trained}


# ---------------------------------------------------------------------------------------------------- one seed
# The notebooks `llf_main`, `llf_ablation` and `llf_feedback_fraction` run one subtask each and loop over its seeds
# with these functions: a papermill run pays ~15 s of kernel start and imports, once for all its seeds. Seed k of a
# run works in `<run>/seed-k/`; the run's results.json holds {"per_seed": [what these return]}.
def seed_dir(out_dir, seed: int) -> Path:
    from aa_lib.runs import seed_folder

    return seed_folder(out_dir, seed)


EVALUATION_FIELDS = ("n_heldout", "heldout_seed", "max_new_tokens", "gen_batch_size")  # what `evaluate` depends on


def llf_main_seed(subtask: str, seed: int, out_dir, sizes: Sizes, held: HeldOut, respondents: dict,
                  inputs: Inputs | None = None, profile: str = "tiny") -> dict:
    """Table 2 for one seed: initial, DPO, DPO+LLF, PPO, PPO+LLF from the subtask's initial policy; the synthesized
    sets are as large as the binary set. `respondents`: Fig. 11's `respondent_scores`, stored beside the methods."""
    out = Path(out_dir)
    policy, pol = initial_checkpoint(subtask, profile)
    _, align = world_rows(subtask, seed, sizes, inputs=inputs)
    pairs = data.to_preference(align)
    # The policy run scored this policy on the same held-out prompts (greedy, same lengths and batches): its numbers
    # are reused.
    same_eval = all(pol.get("sizes", {}).get(k) == getattr(sizes, k) for k in EVALUATION_FIELDS)
    methods = {"initial": pol["initial"] if same_eval else evaluate(policy, held, sizes)}
    trained = {}

    def run_dpo(name, method_pairs, dpo_sizes):  # DPO from the policy into out/name, scored on the held-out prompts
        trained[name] = dpo(subtask, policy, method_pairs, out / name, dpo_sizes, seed, profile)
        methods[name] = evaluate(trained[name], held, sizes)

    run_dpo("dpo", pairs, sizes)
    critic = shared_critic(subtask, profile)
    feedback = critic or train_feedback(subtask, policy, align, out / "feedback_model", sizes, seed, profile=profile)
    synth = synthesize(policy, feedback, align, out / "synthesis", len(pairs), sizes, seed)
    if synth is not None:
        run_dpo("dpo_llf", synth, llf_dpo_sizes(sizes))
    probes = {}
    if isinstance(held, HeldOut):  # the controls and probes need the mini world's truth (profile tiny)
        oracle = oracle_for_rows(align)
        oracle_synth = synthesize(policy, oracle, align, out / "synthesis_oracle", len(pairs), sizes, seed)
        if oracle_synth is not None:
            run_dpo("dpo_oracle_llf", oracle_synth, llf_dpo_sizes(sizes))
        run_dpo("dpo_shuffled", shuffled_pairs(pairs, seed), sizes)
        probes = {"pairs": {k: pair_agreement(p, oracle) for k, p in (("binary", pairs), ("llf", synth),
                                                                       ("oracle_llf", oracle_synth)) if p is not None},
                  "synthesis_oracle": synthesis_report(out / "synthesis_oracle"),
                  "dpo_steps": {k: dpo_log(v) for k, v in trained.items()},
                  "refinement": refinement_probe(policy, probe_prompts(held, sizes), sizes, seed, feedback)}
    prompts = data.to_prompts(align)
    ppo_path, _ = ppo(subtask, policy, data.to_reward_pairs(align), prompts, out / "ppo", sizes, seed, profile)
    methods["ppo"] = evaluate(ppo_path, held, sizes)
    if synth is not None:
        ppo_llf_path, _ = ppo(subtask, policy, llf.to_reward_pairs(synth), prompts, out / "ppo_llf", sizes, seed,
                              profile)
        methods["ppo_llf"] = evaluate(ppo_llf_path, held, sizes)
    return {"subtask": subtask, "seed": seed, "family": family_for(subtask), "sizes": sizes_dict(sizes),
            "methods": {k: summary(v) for k, v in methods.items()}, "respondents": respondents,
            "initial_from_policy_run": methods["initial"] is pol.get("initial"),
            "binary_pairs": len(pairs), "synthesis": synthesis_report(out / "synthesis"),
            "feedback_model": str(feedback), "critic": "shared" if critic else "per seed", "probes": probes}


def ablation_seed(subtask: str, seed: int, sizes: Sizes, held: HeldOut, profile: str = "tiny") -> dict:
    """Table 3 for one seed, on the first `n_probe_prompts` held-out prompts: self-improvement with the trained
    feedback model (the subtask's shared critic, or the seed's from its llf_main run) and with the policy as its own
    critic."""
    policy, _ = initial_checkpoint(subtask, profile)
    main_dir, _ = run_results("llf_main", seed, subtask, profile=profile)
    feedback = shared_critic(subtask, profile) or main_dir / "feedback_model"
    held = probe_prompts(held, sizes)
    return {"subtask": subtask, "seed": seed, "sizes": sizes_dict(sizes), "ties": "count half",
            "with_feedback_model": ablation(policy, feedback, held, sizes, seed),
            "without_feedback_model": ablation(policy, None, held, sizes, seed)}


def feedback_fraction_seed(subtask: str, seed: int, out_dir, sizes: Sizes, held: HeldOut,
                           fractions=(0.25, 0.5, 0.75), inputs: Inputs | None = None, profile: str = "tiny",
                           critics: dict | None = None) -> dict:
    """Fig. 5 for one seed: feedback models on a fraction of the critiques (`critics`: the subtask's
    `fraction_critics`; else the seed's own on a fraction of its alignment rows), each synthesizing as many pairs as
    the binary set, then DPO, scored on the first `n_probe_prompts` held-out prompts; BF and 100 % come from the
    seed's llf_main run, on the same prompts. `relative`: score - initial score."""
    out = Path(out_dir)
    policy, _ = initial_checkpoint(subtask, profile)
    _, main = run_results("llf_main", seed, subtask, profile=profile)
    sizes = replace(sizes, **{k: main["sizes"].get(k, getattr(sizes, k)) for k in SELECTED})
    llf_sizes = llf_dpo_sizes(sizes)  # llf_main's choices on the validation split
    _, align = world_rows(subtask, seed, sizes, inputs=inputs)
    n_pairs = main["binary_pairs"]
    held, n = probe_prompts(held, sizes), sizes.n_probe_prompts
    initial = head_score(main["methods"]["initial"], n)
    rows = [{"feedback": "BF", "fraction": None, "score": head_score(main["methods"]["dpo"], n), "pairs": n_pairs}]
    for f in fractions:
        fb = (critics or {}).get(f) or train_feedback(subtask, policy, align, out / f"feedback_{f}", sizes, seed,
                                                      fraction=f, profile=profile)
        synth = synthesize(policy, fb, align, out / f"synthesis_{f}", n_pairs, sizes, seed)
        score = None if synth is None else evaluate(dpo(subtask, policy, synth, out / f"dpo_{f}", llf_sizes, seed,
                                                        profile), held, sizes)["score"]
        rows.append({"feedback": f"{round(100 * f)}%", "fraction": f, "score": score,
                     "pairs": 0 if synth is None else len(synth)})
    full = main["methods"].get("dpo_llf")
    rows.append({"feedback": "100%", "fraction": 1.0, "score": head_score(full, n) if full else None,
                 "pairs": main["synthesis"]["kept"]})
    for r in rows:
        r["relative"] = None if r["score"] is None else r["score"] - initial
    return {"subtask": subtask, "seed": seed, "sizes": sizes_dict(sizes), "initial": initial, "rows": rows,
            "prompts": len(held.examples), "critic": "shared" if critics else "per seed"}


# ---------------------------------------------------------------------------------------------------- runs
def policy_run(subtask: str, profile: str = "tiny") -> tuple[Path, dict]:
    """(run folder, results) of the finished `policy` run of a subtask: its checkpoints are `untrained/`, `policy/`."""
    from aa_lib.runs import load_results, runs_root_default

    root = Path(runs_root_default())
    for r in load_results("policy", root, profile):
        if r["results"].get("subtask") == subtask:
            return root / "policy" / r["run"], r["results"]
    raise FileNotFoundError(f"no finished `policy` run for subtask={subtask} at profile {profile} under {root}; run "
                            f"`python -m aa_lib.runs policy --profile {profile}` first")


def initial_checkpoint(subtask: str, profile: str = "tiny") -> tuple[Path, dict]:
    """(initial policy, its policy run's results): the user's checkpoint at profile paper, else the run's policy/."""
    pdir, pol = policy_run(subtask, profile=profile)
    return Path(pol.get("checkpoint") or pdir / "policy"), pol


def run_results(spec: str, seed: int, subtask: str, runs_root=None, profile: str = "tiny") -> tuple[Path, dict]:
    """(seed folder, results) of a finished run of `spec` for (subtask, seed)."""
    from aa_lib.runs import load_seed_results

    for r in load_seed_results(spec, runs_root, profile):
        if r["results"].get("subtask") == subtask and r["results"].get("seed") == seed:
            return r["seed_dir"], r["results"]
    raise FileNotFoundError(f"no finished `{spec}` run for subtask={subtask} seed={seed} under "
                            f"{runs_root or 'the runs root'}; run `python -m aa_lib.runs {spec}` first")


def summary(evaluation: dict) -> dict:
    """The numbers of an `evaluate` result worth saving (no per-prompt responses)."""
    return {k: evaluation[k] for k in ("score", "perfect", "overall", "max_overall", "dimensions", "n", "examples",
                                       "benchmarks", "failures", "scores") if k in evaluation}


def sizes_dict(sizes: Sizes) -> dict:
    return asdict(sizes)
