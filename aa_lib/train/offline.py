"""Offline preference methods the framework offers for text (SPEC §4): KTO, SimPO, ORPO, on TRL's trainers.

KTO is TRL's stable `KTOTrainer` (unpaired desirable / undesirable examples: `to_kto` splits preference pairs);
SimPO is TRL's `CPOTrainer` with `loss_type="simpo"` and `cpo_alpha=0` (reference-free, length-normalised reward
with a target margin gamma); ORPO is TRL's `ORPOTrainer` (odds-ratio term on top of the SFT loss). CPO and ORPO
live in `trl.experimental` in TRL 1.12.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import trl
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig as TRLORPOConfig
from trl.experimental.orpo import ORPOTrainer

from aa_lib.train.common import (AAOptions, as_dataset, is_multimodal, load_for_training, load_reference,
                                 peft_config_for)


@dataclass
class KTOConfig(AAOptions, trl.KTOConfig):
    """TRL's KTOConfig with aa_lib's CPU-friendly defaults."""


@dataclass
class SimPOConfig(AAOptions, CPOConfig):
    """TRL's CPOConfig set to SimPO: length-normalised log-probability reward, margin `simpo_gamma` (TRL's 0.5),
    no NLL term."""

    loss_type: str = field(default="simpo", metadata={"help": "CPO loss; 'simpo' for SimPO."})
    cpo_alpha: float = field(default=0.0, metadata={"help": "Weight of the NLL (BC) term; SimPO uses none."})
    beta: float = field(default=2.0, metadata={"help": "SimPO reward scale beta (SimPO paper: 2.0-2.5)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "TRL's pair collator needs every column."})


@dataclass
class ORPOConfig(AAOptions, TRLORPOConfig):
    """TRL's ORPOConfig with aa_lib's CPU-friendly defaults (`beta` is ORPO's lambda)."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "TRL's pair collator needs every column."})


def to_kto(dataset) -> "datasets.Dataset":  # noqa: F821
    """Preference pairs (`prompt`, `chosen`, `rejected`) -> KTO examples (`prompt`, `completion`, `label`)."""
    from trl.data_utils import unpair_preference_dataset

    ds = as_dataset(dataset).remove_columns("aa_row")
    missing = {"prompt", "chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise ValueError(f"to_kto: preference pairs need columns prompt/chosen/rejected; missing {sorted(missing)}")
    return unpair_preference_dataset(ds)


def _load_text(config, model_path, method: str):
    model, processor, family = load_for_training(model_path, config)
    if is_multimodal(family):
        raise ValueError(f"{method} in aa_lib is offered for text families; {model_path} is a {family} model "
                         f"(use aa_lib.train.dpo for media)")
    return model, processor, family


def build_kto_trainer(config: KTOConfig, model_path, dataset) -> trl.KTOTrainer:
    """KTO on `prompt` / `completion` / `label` examples (or preference pairs, split by `to_kto`)."""
    model, tok, family = _load_text(config, model_path, "KTO")
    ds = as_dataset(dataset).remove_columns("aa_row")
    if "label" not in ds.column_names:
        ds = to_kto(ds)
    peft = peft_config_for(model, family, config)
    ref = load_reference(model_path, family) if peft is None else None
    return trl.KTOTrainer(model=model, ref_model=ref, args=config, train_dataset=ds, processing_class=tok,
                          peft_config=peft)


def build_simpo_trainer(config: SimPOConfig, model_path, dataset) -> CPOTrainer:
    """SimPO (CPOTrainer, loss_type='simpo') on `prompt` / `chosen` / `rejected` examples."""
    if config.loss_type != "simpo":
        raise ValueError(f"SimPOConfig.loss_type is {config.loss_type!r}; SimPO needs 'simpo'")
    model, tok, family = _load_text(config, model_path, "SimPO")
    return CPOTrainer(model=model, args=config, train_dataset=as_dataset(dataset).remove_columns("aa_row"),
                      processing_class=tok, peft_config=peft_config_for(model, family, config))


def build_orpo_trainer(config: ORPOConfig, model_path, dataset) -> ORPOTrainer:
    """ORPO on `prompt` / `chosen` / `rejected` examples (no reference model)."""
    model, tok, family = _load_text(config, model_path, "ORPO")
    return ORPOTrainer(model=model, args=config, train_dataset=as_dataset(dataset).remove_columns("aa_row"),
                       processing_class=tok, peft_config=peft_config_for(model, family, config))
