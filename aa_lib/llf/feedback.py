"""The two LLF prompts of SPEC §3 (critique request, refinement), feedback-model training, and self-improvement."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from aa_lib.data import CRITIQUE_REQUEST, CRITIQUE_REQUEST_AUDIO
from aa_lib.llf.generation import MEDIA_COLUMNS, Generation, GenerationOptions, example_key, generate_detailed

# SPEC §3.2: the upstream self-improvement prompt (the critique is pasted in as the model wrote it).
REFINE_TEMPLATE = "{critique}. Now, please refine the response based on the critique and refinement suggestions."


# ---------------------------------------------------------------------------------------------------- conversations
def _msg(role: str, text: str, typed: bool) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}] if typed else text}


def _follow_up(example: dict, response: str, request: str) -> dict:
    """user x (+ media); assistant y; user `request`, with content typed (parts) as x's is."""
    prompt = list(example["prompt"])
    typed = any(isinstance(m.get("content"), list) for m in prompt)
    return {"prompt": prompt + [_msg("assistant", response, typed), _msg("user", request, typed)],
            **{k: example[k] for k in MEDIA_COLUMNS if example.get(k)}}


def critique_example(example: dict, response: str) -> dict:
    """The feedback model's prompt (SPEC §3.1): user x (+ media); assistant y; user critique request."""
    return _follow_up(example, response, CRITIQUE_REQUEST_AUDIO if example.get("audios") else CRITIQUE_REQUEST)


def refine_example(example: dict, response: str, critique: str) -> dict:
    """The policy's self-improvement prompt (SPEC §3.2): user x; assistant y; user "{c}. Now, please refine ...". """
    return _follow_up(example, response, REFINE_TEMPLATE.format(critique=critique))


# ---------------------------------------------------------------------------------------------------- feedback model
def train_feedback_model(config, base_model_path, feedback_dataset, *, subtask=None, fraction: float = 1.0) -> Path:
    """Train a feedback model (SPEC §3.1): SFT of `base_model_path` on (x, y) -> c, loss on the critique only.

    `feedback_dataset`: a normalized align-anything Dataset (converted with `aa_lib.data.to_feedback_sft`) or
    feedback-SFT examples already (`prompt` / `completion`). `fraction` < 1 trains on that share of the rows
    (Fig. 5), drawn with `config.seed`. `config` is an `aa_lib.train.sft.SFTConfig`; returns its output_dir.
    """
    from aa_lib.train.sft import train_sft

    return train_sft(config, base_model_path, feedback_sft_examples(feedback_dataset, subtask=subtask,
                                                                    fraction=fraction, seed=config.seed))


def build_feedback_trainer(config, base_model_path, feedback_dataset, *, subtask=None, fraction: float = 1.0):
    """The SFT trainer `train_feedback_model` runs (to inspect its batches)."""
    from aa_lib.train.sft import build_sft_trainer

    return build_sft_trainer(config, base_model_path, feedback_sft_examples(feedback_dataset, subtask=subtask,
                                                                            fraction=fraction, seed=config.seed))


def feedback_sft_examples(dataset, *, subtask=None, fraction: float = 1.0, seed: int = 0):
    import datasets

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if isinstance(dataset, list):
        dataset = datasets.Dataset.from_list(dataset)
    if fraction < 1:  # a share of the annotated rows (Fig. 5), before the two-per-row expansion
        n = max(1, round(fraction * len(dataset)))
        idx = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
        dataset = dataset.select(idx)
    if {"prompt", "completion"} <= set(dataset.column_names):
        return dataset
    from aa_lib.data import to_feedback_sft

    return to_feedback_sft(dataset, subtask=subtask)


# ---------------------------------------------------------------------------------------------------- self-improving
def is_critic(feedback) -> bool:
    """Whether `feedback` is a critic that is not a model: an object with `critique(examples, responses) -> texts`
    (e.g. the mini rubric as an oracle critic, `aa_lib.experiments.Critic`) and a `name`."""
    return hasattr(feedback, "critique") and hasattr(feedback, "name")


def critiques(feedback, feedback_processor, examples: list[dict], responses: list, options, batch_size: int,
              seed: int, keys: list[str], as_prompt: Callable[[dict, object], dict]) -> list[Generation]:
    """The critique of each response: a critic's text (always finished), or the feedback model's greedy reply to
    `as_prompt(example, response)` (the critique request with the response in the conversation)."""
    if is_critic(feedback):
        return [Generation(text=t, n_tokens=len(t.split()), finished=True)
                for t in feedback.critique(examples, responses)]
    return generate_detailed(feedback, feedback_processor, [as_prompt(e, y) for e, y in zip(examples, responses)],
                             options, batch_size, seed, keys)


def _as_model(model_or_path, processor=None):
    if is_critic(model_or_path):
        return model_or_path, None
    if isinstance(model_or_path, (str, os.PathLike)):
        from aa_lib.models import load_model

        return load_model(model_or_path)
    if processor is None:
        raise ValueError("a model object needs its processor (pass processor= / feedback_processor=)")
    return model_or_path, processor


def _improve(policy, processor, feedback, feedback_processor, examples: list[dict], keys: list[str],
             policy_options, feedback_options, refine_options, batch_size: int, seed: int) -> list[dict]:
    """One self-improvement pass over `examples`: y, c, y* with their generation details."""
    ys = generate_detailed(policy, processor, examples, policy_options, batch_size, seed, [k + ":y" for k in keys])
    cs = critiques(feedback, feedback_processor, examples, [y.text for y in ys], feedback_options, batch_size, seed,
                   [k + ":c" for k in keys], critique_example)
    ref_ex = [refine_example(ex, y.text, c.text) for ex, y, c in zip(examples, ys, cs)]
    ss = generate_detailed(policy, processor, ref_ex, refine_options, batch_size, seed, [k + ":r" for k in keys])
    return [{"y": y.text, "c": c.text, "y_star": s.text, "y_tokens": y.n_tokens, "y_star_tokens": s.n_tokens,
             "y_finished": y.finished, "c_finished": c.finished, "y_star_finished": s.finished}
            for y, c, s in zip(ys, cs, ss)]


def self_improve(policy, prompts, feedback_model=None, *, processor=None, feedback_processor=None,
                 policy_options=None, feedback_options=None, refine_options=None, batch_size: int = 8,
                 seed: int = 0) -> list[dict]:
    """y ~ policy(x); c = feedback_model(x, y); y* = policy(x, y, c) for each prompt example (SPEC §3.2).

    `policy` / `feedback_model`: a model folder or a loaded model (then pass its processor). `feedback_model=None`
    makes the policy its own feedback model (Table 3, "w/o feedback model"). Defaults: y sampled at temperature 1,
    c and y* greedy. Returns one dict per prompt: y, c, y_star (+ token counts and EOS flags).
    """
    policy, processor = _as_model(policy, processor)
    if feedback_model is None:
        feedback_model, feedback_processor = policy, processor
    else:
        feedback_model, feedback_processor = _as_model(feedback_model, feedback_processor)
    import datasets

    examples = [dict(ex) for ex in (_prompt_dataset(prompts) if isinstance(prompts, datasets.Dataset) else prompts)]
    keys = [example_key(ex) for ex in examples]
    return _improve(policy, processor, feedback_model, feedback_processor, examples, keys,
                    policy_options or GenerationOptions(do_sample=True), feedback_options, refine_options,
                    batch_size, seed)


def _prompt_dataset(prompts, subtask=None):
    """A Dataset of generation prompts (`prompt` + media lists): as given, from a list, or via data.to_prompts."""
    import datasets

    if isinstance(prompts, list):
        prompts = datasets.Dataset.from_list(prompts)
    if "prompt" not in prompts.column_names:
        from aa_lib.data import to_prompts

        prompts = to_prompts(prompts, subtask=subtask)
    return prompts.select_columns(["prompt"] + [c for c in MEDIA_COLUMNS if c in prompts.column_names])


def win_rate(judge: Callable[[int, str, str], int], responses: list[str], improved: list[str]) -> dict:
    """Table 3's metric: share of prompts where the self-improved response wins against the initial one.

    `judge(i, a, b)` returns 1 if `a` is better, 2 if `b` is better, 0 or "tie" for a tie (e.g. the mini world's
    `judge_pair` on prompt i); ties count half.
    """
    if len(responses) != len(improved):
        raise ValueError(f"win_rate: {len(responses)} initial vs {len(improved)} improved responses")
    wins = ties = 0
    for i, (y, s) in enumerate(zip(responses, improved)):
        v = judge(i, s, y)
        v = 0 if v == "tie" else v  # aa_lib.mini.judge_pair says "tie"
        if v not in (0, 1, 2):
            raise ValueError(f"win_rate: judge returned {v!r} for prompt {i} (expected 0, 1 or 2)")
        wins += v == 1
        ties += v == 0
    n = len(responses)
    return {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "win_rate": (wins + ties / 2) / max(n, 1)}
