"""Hyper-parameter presets: paper Tables 5-8 as the data the trainers actually read.

`PRESETS[profile][stage][subtask]` is a `StagePreset`. Profile `paper` holds the values of the paper's Appendix
10.5 (Table 5 feedback modeling, 6 reward modeling, 7 DPO, 8 PPO) for the five subtasks it trains; profile `tiny`
keeps each schedule's shape (scheduler types, warmup ratios, beta, sampling temperature) and shrinks what a 2-core
CPU cannot afford. `make_config` turns a preset into the TRL config object of its stage, so the table that
`render_table` draws is, by construction, what training used.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from aa_lib.subtasks import get_subtask

PROFILES = ("tiny", "paper")
# Paper stage name -> the table that reports it.
STAGES = {"feedback_model": "Table 5", "reward_model": "Table 6", "dpo": "Table 7", "ppo": "Table 8"}
PAPER_SUBTASKS = ("ti2t", "t2i", "ti2ti", "tv2t", "ta2t")  # the table columns, in the paper's order


@dataclass(frozen=True)
class StagePreset:
    """One column of one of Tables 5-8. For PPO, `learning_rate` / `scheduler` / `warmup_ratio` are the actor's."""

    epochs: int = field(metadata={"help": "Passes over the training data (num_train_epochs)."})
    per_device_batch_size: int = field(metadata={"help": "Examples (PPO: prompts) per device per micro-step."})
    learning_rate: float = field(metadata={"help": "Peak learning rate (PPO: of the actor)."})
    scheduler: str = field(metadata={"help": "transformers scheduler type (PPO: the actor's)."})
    warmup_ratio: float = field(metadata={"help": "Share of the steps spent in linear warmup."})
    gradient_accumulation: int = field(metadata={"help": "Micro-steps per optimizer step."})
    weight_decay: float = field(metadata={"help": "AdamW weight decay."})
    max_token_length: int = field(metadata={"help": "Longest tokenized sequence (prompt + response)."})
    bf16: bool = field(metadata={"help": "Train in bfloat16 mixed precision."})
    beta: float | None = field(default=None, metadata={"help": "DPO scale coefficient beta."})
    critic_learning_rate: float | None = field(default=None, metadata={"help": "PPO critic peak learning rate."})
    critic_scheduler: str | None = field(default=None, metadata={"help": "PPO critic scheduler type."})
    critic_warmup_ratio: float | None = field(default=None, metadata={"help": "PPO critic warmup ratio."})
    sampling_temperature: float | None = field(default=None, metadata={"help": "PPO rollout sampling temperature."})


# The tables' rows per stage: (CSV hyperparameter name, StagePreset field). The paper names PPO's actor knobs
# "actor_*" and DPO's beta "scale_coefficient_beta".
_COMMON = ("epochs", "per_device_batch_size", "learning_rate", "scheduler", "warmup_ratio", "gradient_accumulation",
           "weight_decay", "max_token_length", "bf16")
_SAME = tuple((f, f) for f in _COMMON)
TABLE_ROWS: dict[str, tuple[tuple[str, str], ...]] = {
    "feedback_model": _SAME,
    "reward_model": _SAME,
    "dpo": _SAME + (("scale_coefficient_beta", "beta"),),
    "ppo": tuple((f, f.removeprefix("actor_")) for f in (
        "epochs", "per_device_batch_size", "actor_learning_rate", "actor_scheduler", "actor_warmup_ratio",
        "critic_learning_rate", "critic_scheduler", "critic_warmup_ratio", "gradient_accumulation", "weight_decay",
        "max_token_length", "bf16", "sampling_temperature")),
}

# ---------------------------------------------------------------- profile `paper` (Appendix 10.5)
# Each stage: the TI2T column, then what the other subtasks change.
_FEEDBACK = StagePreset(epochs=3, per_device_batch_size=4, learning_rate=1e-6, scheduler="cosine", warmup_ratio=0.03,
                        gradient_accumulation=1, weight_decay=0.0, max_token_length=4096, bf16=True)
_RM = replace(_FEEDBACK, max_token_length=2048)
_DPO = replace(_FEEDBACK, epochs=2, max_token_length=2048, beta=0.1)
_PPO = StagePreset(epochs=3, per_device_batch_size=4, learning_rate=1e-5, scheduler="cosine", warmup_ratio=0.03,
                   gradient_accumulation=1, weight_decay=0.01, max_token_length=2048, bf16=True,
                   critic_learning_rate=5e-6, critic_scheduler="constant", critic_warmup_ratio=0.03,
                   sampling_temperature=1.0)

PAPER: dict[str, dict[str, StagePreset]] = {
    "feedback_model": {
        "ti2t": _FEEDBACK,
        "t2i": replace(_FEEDBACK, gradient_accumulation=2),
        "ti2ti": replace(_FEEDBACK, gradient_accumulation=2),
        "tv2t": replace(_FEEDBACK, per_device_batch_size=3, learning_rate=1e-7, warmup_ratio=0.1),
        "ta2t": _FEEDBACK,
    },
    "reward_model": {
        "ti2t": _RM,
        "t2i": replace(_RM, learning_rate=5e-6, gradient_accumulation=2, max_token_length=4096),
        "ti2ti": replace(_RM, learning_rate=5e-7, gradient_accumulation=2, max_token_length=4096),
        "tv2t": replace(_RM, per_device_batch_size=1, warmup_ratio=0.01, max_token_length=4096),
        "ta2t": _RM,
    },
    "dpo": {
        "ti2t": _DPO,
        "t2i": replace(_DPO, learning_rate=5e-7, gradient_accumulation=2, max_token_length=4096),
        "ti2ti": replace(_DPO, per_device_batch_size=2, learning_rate=5e-7, gradient_accumulation=2,
                         max_token_length=4096),
        "tv2t": replace(_DPO, per_device_batch_size=3, learning_rate=1e-7, warmup_ratio=0.1, max_token_length=4096),
        "ta2t": _DPO,
    },
    "ppo": {
        "ti2t": _PPO,
        # Image generation samples cold (0.2): the paper's Table 8.
        "t2i": replace(_PPO, gradient_accumulation=4, weight_decay=0.0, max_token_length=4096,
                       sampling_temperature=0.2),
        "ti2ti": replace(_PPO, gradient_accumulation=4, weight_decay=0.0, max_token_length=4096,
                         sampling_temperature=0.2),
        "tv2t": replace(_PPO, per_device_batch_size=1, learning_rate=5e-8, critic_learning_rate=5e-8,
                        weight_decay=0.0),
        "ta2t": replace(_PPO, learning_rate=1e-6),
    },
}

# ---------------------------------------------------------------- profile `tiny`
# Same schedule shapes; tiny models on few examples need far larger steps to move at all, one epoch fits the
# minutes budget, and the tiny architectures allow 512 positions. No bf16 on CPU. t2t has no paper column but
# the tiny world trains it, with the TI2T column's shape.
_TINY_LR = {"feedback_model": 5e-4, "reward_model": 5e-4, "dpo": 2e-4, "ppo": 1e-4}


def _tiny(stage: str, p: StagePreset) -> StagePreset:
    lr = _TINY_LR[stage]
    critic = None if p.critic_learning_rate is None else lr * p.critic_learning_rate / p.learning_rate
    return replace(p, epochs=1, per_device_batch_size=2, learning_rate=lr, gradient_accumulation=1,
                   max_token_length=min(p.max_token_length, 512), bf16=False, critic_learning_rate=critic)


TINY: dict[str, dict[str, StagePreset]] = {
    stage: {**{s: _tiny(stage, p) for s, p in by_subtask.items()}, "t2t": _tiny(stage, by_subtask["ti2t"])}
    for stage, by_subtask in PAPER.items()
}
PRESETS = {"paper": PAPER, "tiny": TINY}


def get_preset(stage: str, subtask: str, profile: str = "tiny") -> StagePreset:
    """The preset of one stage for one subtask, with an error that says what exists."""
    if profile not in PRESETS:
        raise KeyError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    if stage not in PRESETS[profile]:
        raise KeyError(f"no preset stage {stage!r} (known: {', '.join(STAGES)})")
    name = get_subtask(subtask).name  # accepts "TI2T" and "ti2t"; unknown names raise there
    if profile == "paper" and name == "t2t":
        # The paper aligns no text-only model; a t2t checkpoint at profile paper (the rehearsal's SmolLM2) takes the
        # TI2T column, as the tiny world's t2t does. Tables 5-8 show the paper's five columns only.
        name = "ti2t"
    by_subtask = PRESETS[profile][stage]
    if name not in by_subtask:
        raise KeyError(f"profile {profile!r} has no {stage} preset for {name} (the paper trains only "
                       f"{', '.join(PAPER_SUBTASKS)}; have: {', '.join(by_subtask)})")
    return by_subtask[name]


# ---------------------------------------------------------------- presets -> trainer configs
def make_config(stage: str, subtask: str, output_dir: str, profile: str = "tiny", **overrides):
    """The TRL config of `stage` filled from its preset; `overrides` (any config field) win over the preset, except
    those that are None.

    The configs are aa_lib's (TRL's plus `AAOptions`): feedback_model -> aa_lib.train.sft.SFTConfig (SFT on the
    critiques), reward_model -> aa_lib.train.reward.RewardConfig, dpo -> aa_lib.train.dpo.DPOConfig (beta),
    ppo -> aa_lib.train.ppo.PPOConfig (actor and critic schedules, sampling temperature).
    """
    p = get_preset(stage, subtask, profile)
    # The TrainingArguments fields every stage shares (transformers 5: warmup as a ratio in `warmup_steps`).
    kw = dict(output_dir=str(output_dir), report_to="none", save_strategy="no", logging_steps=1,
              num_train_epochs=p.epochs, per_device_train_batch_size=p.per_device_batch_size,
              learning_rate=p.learning_rate, lr_scheduler_type=p.scheduler, warmup_steps=p.warmup_ratio,
              gradient_accumulation_steps=p.gradient_accumulation, weight_decay=p.weight_decay, bf16=p.bf16,
              max_length=p.max_token_length)
    if stage == "feedback_model":
        from aa_lib.train.sft import SFTConfig as cls
    elif stage == "reward_model":
        from aa_lib.train.reward import RewardConfig as cls
    elif stage == "dpo":
        from aa_lib.train.dpo import DPOConfig as cls

        kw.update(beta=p.beta)
    else:
        from aa_lib.train.ppo import PPOConfig as cls

        kw.update(critic_learning_rate=p.critic_learning_rate, critic_lr_scheduler_type=p.critic_scheduler,
                  critic_warmup_ratio=p.critic_warmup_ratio, temperature=p.sampling_temperature)
    kw.update({k: v for k, v in overrides.items() if v is not None})  # None: the preset's value (profile paper)
    import torch

    if kw.get("bf16") and not torch.cuda.is_available() and "bf16" not in overrides:
        # The paper's bf16 is a GPU setting: on a CPU-only host (the rehearsal) transformers refuses it without
        # use_cpu, and under aa_lib's pinned AVX2 numerics bf16 matmuls are far slower than float32.
        kw["bf16"] = False
    return cls(**kw)


# ---------------------------------------------------------------- Tables 5-8 from the presets
def render_table(profile: str = "paper") -> pd.DataFrame:
    """Tables 5-8 in the layout of `reported/tables5to8_hyperparameters.csv`: stage, hyperparameter, one column
    per paper subtask (upper-case codes), read from the presets of `profile`."""
    return pd.DataFrame([{"stage": stage, "hyperparameter": name,
                          **{get_subtask(s).code: getattr(get_preset(stage, s, profile), attr) for s in PAPER_SUBTASKS}}
                         for stage, table_rows in TABLE_ROWS.items() for name, attr in table_rows])


def parse_cell(value):
    """A table cell as a comparable value: "1e-6" and 1e-06 -> 1e-06, "True" -> True, "cosine" -> "cosine"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def compare_with_reported(df: pd.DataFrame, reported: pd.DataFrame) -> list[str]:
    """Cell-by-cell differences between a rendered table and the reported CSV ("" when they agree)."""
    key = ["stage", "hyperparameter"]
    ours = {tuple(r[k] for k in key): r for r in df.to_dict("records")}
    theirs = {tuple(r[k] for k in key): r for r in reported.to_dict("records")}
    problems = [f"row {k}: in the reported table, not in the presets" for k in theirs.keys() - ours.keys()]
    problems += [f"row {k}: in the presets, not in the reported table" for k in ours.keys() - theirs.keys()]
    cols = [c for c in reported.columns if c not in key]
    if set(cols) != set(df.columns) - set(key):
        problems.append(f"columns differ: reported {cols}, presets {[c for c in df.columns if c not in key]}")
    for k in sorted(theirs.keys() & ours.keys()):
        for c in cols:
            a, b = parse_cell(ours[k].get(c)), parse_cell(theirs[k][c])
            if a != b:
                problems.append(f"row {k} column {c}: presets {a!r}, reported {b!r}")
    return problems


def _text(v) -> str:
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return f"{v:g}"  # 1e-06, 0.03, 0.1: as the paper prints them, without rounding away small rates


def table_with_reported(profile: str = "tiny") -> pd.DataFrame:
    """Tables 5-8 for display: per subtask, the presets of `profile` (what runs at that profile use) and, beside
    them, the paper's reported value (column `<CODE> (paper)`), all as text so 1e-06 stays 1e-06."""
    from aa_lib.figures import reported

    ours = render_table(profile)
    paper = reported("tables5to8_hyperparameters")
    merged = ours.merge(paper, on=["stage", "hyperparameter"], how="left", suffixes=("", " (paper)"))
    cols = ["stage", "hyperparameter"]
    for code in (get_subtask(s).code for s in PAPER_SUBTASKS):
        cols += [code, f"{code} (paper)"]
    return merged[cols].map(_text)


def settings_ran(subtask: str, sizes, profile: str = "tiny") -> list[dict]:
    """The trainer settings an LLF cell of `subtask` ran with `sizes` (`experiments.Sizes`, e.g. an llf_main run's
    recorded sizes): rows {stage, hyperparameter, value}, the experiments' overrides where they set one, else the
    preset's (Tables 5-8 render the presets; this says what the experiments changed)."""
    text = get_subtask(subtask).text_output
    rows = []

    def add(stage, **kv):
        rows.extend({"stage": stage, "hyperparameter": k, "value": v} for k, v in kv.items() if v is not None)

    if profile == "tiny":
        add("policy SFT", steps=sizes.sft_steps, learning_rate=sizes.sft_lr, batch=sizes.batch_size,
            refinement_share=sizes.refine_share)
        if text and sizes.reading_steps:
            add("policy SFT stage 2 (reading)", steps=sizes.reading_steps, learning_rate=sizes.reading_lr,
                batch=sizes.reading_batch_size or sizes.batch_size, media_dropped=sizes.reading_media_drop)
    shared = profile == "tiny" and sizes.critic_rows  # one critic per subtask, not one per seed
    if shared:
        add("feedback_model (shared critic)", rows=sizes.critic_rows, steps=sizes.critic_steps,
            learning_rate=sizes.critic_lr, batch=sizes.batch_size, critique_tokens=sizes.critique_tokens)
    for stage, steps in (("feedback_model", sizes.feedback_steps), ("dpo", sizes.dpo_steps),
                         ("reward_model", sizes.reward_steps)):
        if stage == "feedback_model" and shared:
            continue
        p = get_preset(stage, subtask, profile)
        lr = {"feedback_model": sizes.feedback_lr, "dpo": sizes.dpo_lr}.get(stage) or p.learning_rate
        add(stage, steps=steps if steps is not None else f"{p.epochs} epochs", learning_rate=lr,
            batch=sizes.batch_size or p.per_device_batch_size, beta=p.beta)
        if stage == "dpo":
            llf_steps = sizes.dpo_llf_steps or steps
            add(stage, learning_rate_synthesized_pairs=sizes.dpo_llf_lr or lr,
                steps_synthesized_pairs=llf_steps if llf_steps is not None else f"{p.epochs} epochs")
    p = get_preset("ppo", subtask, profile)
    add("ppo", rollouts=sizes.ppo_episodes if sizes.ppo_episodes is not None else f"{p.epochs} epochs",
        learning_rate=sizes.ppo_lr or p.learning_rate,
        batch=(min(8, sizes.batch_size) if sizes.batch_size else p.per_device_batch_size) if text else
        f"{sizes.ppo_prompts} prompts x {sizes.ppo_samples} images")
    return rows
