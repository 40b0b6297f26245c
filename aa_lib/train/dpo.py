"""Direct preference optimisation for every subtask: TRL's DPOTrainer, with aa_lib's pair collator for media.

Loss (SPEC §4): -logsigmoid(beta * (Δchosen - Δrejected)), beta 0.1 by default (TRL's "sigmoid" loss).
Text families use TRL unchanged. For media families the batch comes from `aa_lib.collators.PairCollator`, which
returns TRL's own DPO layout (2B rows, chosen first, `completion_mask`, media tensors), so TRL's loss code runs as
is. The one override: TRL tokenizes non-image datasets up front (`_prepare_dataset`), which would drop the audio /
video columns, so `DPOTrainer` skips that step whenever a collator is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trl

from aa_lib.collators import PairCollator
from aa_lib.train.common import (AAOptions, as_dataset, is_multimodal, load_for_training, load_reference,
                                 peft_config_for, save_trained)
from aa_lib.train.launch import launchable


@dataclass
class DPOConfig(AAOptions, trl.DPOConfig):
    """TRL's DPOConfig plus aa_lib's options; TRL's default beta is the paper's 0.1."""


class DPOTrainer(trl.DPOTrainer):
    """TRL's DPOTrainer that leaves datasets raw when a collator does the tokenizing (audio / video / images)."""

    def __init__(self, *args, data_collator=None, **kwargs):
        self._raw_dataset = data_collator is not None
        super().__init__(*args, data_collator=data_collator, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if self._raw_dataset:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def build_dpo_trainer(config: DPOConfig, model_path, dataset, ref_model_path=None) -> DPOTrainer:
    """A DPOTrainer on `prompt` / `chosen` / `rejected` examples (+ media keys). The reference is `ref_model_path`
    (default: `model_path`), loaded once and frozen; with LoRA the reference is the base model (adapters off)."""
    model, processor, family = load_for_training(model_path, config)
    if "chosen_images" in dataset[0]:
        raise ValueError("DPO on image outputs (t2i / ti2ti: chosen_images / rejected_images) goes through "
                         "aa_lib.train.image_output.train_image_dpo (TRL's loss reads Chameleon's masked image logits)")
    peft = peft_config_for(model, family, config)
    ref = load_reference(ref_model_path or model_path, family) if peft is None else None
    if not is_multimodal(family):
        ds = dataset if not isinstance(dataset, list) else as_dataset(dataset).remove_columns("aa_row")
        return DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=ds, processing_class=processor,
                          peft_config=peft)
    config.remove_unused_columns = False
    collator = PairCollator(processor, family, max_length=config.max_length, num_frames=config.num_frames)
    return DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=as_dataset(dataset),
                      data_collator=collator, processing_class=processor, peft_config=peft)


@launchable
def train_dpo(config: DPOConfig, model_path, dataset, ref_model_path=None) -> Path:
    """Run DPO from `model_path`; the merged policy and processor go to `config.output_dir`."""
    trainer = build_dpo_trainer(config, model_path, dataset, ref_model_path)
    trainer.train()
    return save_trained(trainer.model, trainer.processing_class, config.output_dir, source_path=model_path,
                        log_history=trainer.state.log_history)
