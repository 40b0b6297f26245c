"""Supervised fine-tuning for every subtask: TRL's SFTTrainer, with aa_lib's collator for media prompts.

Text families go through TRL unchanged (its prompt/completion path already puts the loss on the completion only).
Media families keep TRL's trainer and swap in `aa_lib.collators.SFTCollator`, which processes the images / videos /
audio TRL has no path for; dataset preparation is skipped because the collator tokenizes on the fly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trl

import torch
import torch.nn.functional as F
import transformers

from aa_lib.collators import ImageOutputSFTCollator, SFTCollator
from aa_lib.train.common import (AAOptions, as_dataset, is_multimodal, load_for_training, peft_config_for,
                                 save_trained)
from aa_lib.train.launch import launchable


@dataclass
class SFTConfig(AAOptions, trl.SFTConfig):
    """TRL's SFTConfig plus aa_lib's options (family, freezing, LoRA, frames) and CPU defaults."""


def build_sft_trainer(config: SFTConfig, model_path, dataset) -> trl.SFTTrainer:
    """An SFTTrainer for `model_path` on prompt/completion examples (+ `images` / `videos` / `audios`)."""
    model, processor, family = load_for_training(model_path, config)
    if "completion_images" in dataset[0]:  # image targets (Chameleon t2i / ti2ti)
        if family != "chameleon":
            raise ValueError(f"image-output SFT for {family} goes through aa_lib.train.image_output.train_image_sft")
        config.remove_unused_columns = False
        collator = ImageOutputSFTCollator(processor, family, max_length=config.max_length)
        return ImageTokenSFTTrainer(model=model, args=config, train_dataset=as_dataset(dataset),
                                    data_collator=collator, processing_class=processor)
    peft = peft_config_for(model, family, config)
    if not is_multimodal(family):
        ds = dataset if not isinstance(dataset, list) else as_dataset(dataset).remove_columns("aa_row")
        return trl.SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=processor,
                              peft_config=peft)
    config.remove_unused_columns = False  # the collator needs the raw media columns
    config.dataset_kwargs = {**(config.dataset_kwargs or {}), "skip_prepare_dataset": True}
    collator = SFTCollator(processor, family, max_length=config.max_length, num_frames=config.num_frames)
    return trl.SFTTrainer(model=model, args=config, train_dataset=as_dataset(dataset), data_collator=collator,
                          processing_class=processor, peft_config=peft)


class ImageTokenSFTTrainer(transformers.Trainer):
    """Chameleon T2I / TI2TI: next-token loss on the target image's VQ tokens (and any response text).

    ChameleonForConditionalGeneration.forward sets image-token logits to the dtype minimum, so its own loss can
    never learn to emit images; here the logits come from `lm_head(hidden_states)` unmasked. The image
    placeholders (prompt and target) are replaced by their VQ ids, as Chameleon does inside its forward.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, labels = inputs["input_ids"].clone(), inputs["labels"].clone()
        placeholder = ids == model.model.vocabulary_mapping.image_token_id
        with torch.no_grad():  # argmax quantisation: no gradient reaches the VQ encoder anyway
            codes = model.model.get_image_tokens(inputs["pixel_values"]).to(ids.dtype)
        ids[placeholder] = codes.flatten()
        target = inputs["image_target_mask"]
        labels[target] = ids[target]
        hidden = model.model(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False).last_hidden_state
        logits = model.lm_head(hidden[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return (loss, {"logits": logits}) if return_outputs else loss


@launchable
def train_sft(config: SFTConfig, model_path, dataset) -> Path:
    """Fine-tune `model_path` on `dataset`; the merged model and processor go to `config.output_dir`."""
    trainer = build_sft_trainer(config, model_path, dataset)
    trainer.train()
    return save_trained(trainer.model, trainer.processing_class, config.output_dir, source_path=model_path)
