"""Online RL without a critic: GRPO and RLOO, TRL's own trainers, with a reward model or a reward function.

A reward is what TRL's `reward_funcs` takes: a Python callable `f(prompts, completions, **columns) -> list[float]`
(e.g. the mini world's rubric), a sequence-classification reward model (an instance or a folder trained by
`aa_lib.train.reward`), or a list of them. Text families only: the paper offers these for text, and the media
path of PPO (`aa_lib.train.ppo`) is where images / video / audio reach the models during rollouts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trl

from aa_lib.train.common import AAOptions, as_dataset, is_multimodal, load_for_training, peft_config_for


@dataclass
class GRPOConfig(AAOptions, trl.GRPOConfig):
    """TRL's GRPOConfig with aa_lib's CPU-friendly defaults; groups of `num_generations` completions per prompt."""

    num_generations: int = field(default=2, metadata={"help": "Completions per prompt (the group)."})
    max_completion_length: int = field(default=64, metadata={"help": "Longest sampled completion (tokens)."})


@dataclass
class RLOOConfig(AAOptions, trl.RLOOConfig):
    """TRL's RLOOConfig with aa_lib's CPU-friendly defaults; the baseline is the mean of the other samples in a
    group of `num_generations` (TRL's default 2) completions per prompt."""

    max_completion_length: int = field(default=64, metadata={"help": "Longest sampled completion (tokens)."})


def _reward_funcs(reward):
    """Reward callables / models as TRL takes them, with a tokenizer for every reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    items = reward if isinstance(reward, (list, tuple)) else [reward]
    funcs, tokenizers = [], []
    for r in items:
        if isinstance(r, (str, Path)):
            if not Path(r).is_dir():
                raise FileNotFoundError(f"reward model folder {r} does not exist (the hub is off limits here)")
            funcs.append(AutoModelForSequenceClassification.from_pretrained(r, num_labels=1))
            tokenizers.append(AutoTokenizer.from_pretrained(r))
        elif hasattr(r, "config"):  # an instantiated reward model: its tokenizer is loadable from its own folder
            funcs.append(r)
            tokenizers.append(AutoTokenizer.from_pretrained(r.name_or_path))
        elif callable(r):
            funcs.append(r)
            tokenizers.append(None)
        else:
            raise TypeError(f"reward {r!r}: expected a callable, a reward model or its folder")
    return funcs, tokenizers


def _build(trainer_cls, config, model_path, dataset, reward):
    model, processor, family = load_for_training(model_path, config)
    if is_multimodal(family):
        raise ValueError(f"{trainer_cls.__name__} in aa_lib is for text families; {model_path} is a {family} "
                         f"model (use aa_lib.train.ppo for media)")
    funcs, tokenizers = _reward_funcs(reward)
    ds = as_dataset(dataset).remove_columns("aa_row")
    return trainer_cls(model=model, reward_funcs=funcs, args=config, train_dataset=ds, processing_class=processor,
                       reward_processing_classes=tokenizers, peft_config=peft_config_for(model, family, config))


def build_grpo_trainer(config: GRPOConfig, model_path, dataset, reward) -> trl.GRPOTrainer:
    """A GRPOTrainer on `prompt` examples (extra columns reach reward functions as keyword arguments)."""
    return _build(trl.GRPOTrainer, config, model_path, dataset, reward)


def build_rloo_trainer(config: RLOOConfig, model_path, dataset, reward) -> trl.RLOOTrainer:
    """An RLOOTrainer on `prompt` examples (extra columns reach reward functions as keyword arguments)."""
    return _build(trl.RLOOTrainer, config, model_path, dataset, reward)
