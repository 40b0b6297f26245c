"""Reward models for every text-output subtask.

Text (t2t): TRL's RewardTrainer on a sequence-classification head. Images / video / audio prompts: TRL has no
reward model over a multimodal backbone, so `RewardModel` adds one: the backbone's last hidden state at the last
non-pad token -> linear -> scalar, trained with the Bradley-Terry loss -logsigmoid(r_chosen - r_rejected) on
`PairCollator` batches (chosen rows first). It saves as a folder: the backbone as an ordinary model folder (so
`aa_lib.models.load_model` reads it) plus `aa_reward_head.safetensors` and `aa_reward.json`.

`load_reward_model(path)` reads either kind; `score(model, batch)` returns one reward per row for either kind.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import trl

from aa_lib.collators import PairCollator
from aa_lib.models import load_model
from aa_lib.train.common import (AAOptions, as_dataset, is_multimodal, load_for_training, peft_config_for,
                                 save_trained)
from aa_lib.train.launch import launchable

HEAD_FILE = "aa_reward_head.safetensors"
META_FILE = "aa_reward.json"


@dataclass
class RewardConfig(AAOptions, trl.RewardConfig):
    """TRL's RewardConfig plus aa_lib's options (family, freezing, LoRA, frames) and CPU defaults."""


class RewardModel(torch.nn.Module):
    """A multimodal backbone (any aa_lib family) with a scalar score head on the last non-pad token."""

    def __init__(self, backbone, family: str):
        super().__init__()
        self.backbone = backbone
        self.family = family
        hidden = _base(backbone).config.get_text_config().hidden_size
        self.score_head = torch.nn.Linear(hidden, 1, bias=False)
        torch.nn.init.normal_(self.score_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        self.config = _base(backbone).config  # Trainer reads model.config
        # The LM head is unused by a reward model: freeze it (unless tied to the input embeddings), so that the
        # optimizer holds no parameter that never gets a gradient.
        if not getattr(self.config.get_text_config(), "tie_word_embeddings", False):
            _base(backbone).get_output_embeddings().requires_grad_(False)

    def forward(self, input_ids, attention_mask, completion_mask=None, labels=None, **media) -> torch.Tensor:
        out = _base(self.backbone).model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **media)
        hidden = out.last_hidden_state
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(dim=1)  # last non-pad token, left or right padding
        return self.score_head(hidden[torch.arange(len(hidden)), last]).squeeze(-1)

    def save(self, out_dir, processor, source_path=None) -> Path:
        from safetensors.torch import save_file

        def extra(tmp: Path):
            save_file({"weight": self.score_head.weight.detach().cpu().contiguous()}, str(tmp / HEAD_FILE))
            (tmp / META_FILE).write_text(json.dumps({"family": self.family, "kind": "last_token_linear"}))

        return save_trained(self.backbone, processor, out_dir, source_path=source_path, extra=extra)


def _base(backbone):
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


class MultimodalRewardTrainer(transformers.Trainer):
    """Bradley-Terry training of a `RewardModel` on PairCollator batches: TRL's RewardTrainer loss, with its
    center_rewards_coefficient."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = model(**inputs)
        chosen, rejected = rewards.chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()
        coef = getattr(self.args, "center_rewards_coefficient", None)
        if coef:
            loss = loss + coef * (chosen + rejected).pow(2).mean()
        return (loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}) if return_outputs else loss


def build_reward_trainer(config: RewardConfig, model_path, dataset):
    """A reward trainer on `chosen` / `rejected` conversations (+ media keys): TRL's for text, aa_lib's otherwise."""
    model, processor, family = load_for_training(model_path, config)
    peft = peft_config_for(model, family, config)
    if not is_multimodal(family):
        del model  # TRL builds the sequence-classification model from the folder
        seq = transformers.AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1,
                                                                              dtype=torch.float32)
        if peft is not None:
            peft.modules_to_save = ["score"]
        ds = dataset if not isinstance(dataset, list) else as_dataset(dataset).remove_columns("aa_row")
        return trl.RewardTrainer(model=seq, args=config, train_dataset=ds, processing_class=processor,
                                 peft_config=peft)
    if peft is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft)
    torch.manual_seed(config.seed)
    rm = RewardModel(model, family)
    config.remove_unused_columns = False
    collator = PairCollator(processor, family, max_length=config.max_length, num_frames=config.num_frames)
    return MultimodalRewardTrainer(model=rm, args=config, train_dataset=as_dataset(dataset), data_collator=collator,
                                   processing_class=processor)


@launchable
def train_reward(config: RewardConfig, model_path, dataset) -> Path:
    """Train a reward model from `model_path`; the folder goes to `config.output_dir`."""
    trainer = build_reward_trainer(config, model_path, dataset)
    trainer.train()
    if isinstance(trainer.model, RewardModel):
        return trainer.model.save(config.output_dir, trainer.processing_class, source_path=model_path)
    return save_trained(trainer.model, trainer.processing_class, config.output_dir, source_path=model_path)


def load_reward_model(path):
    """(reward model, processor) from a folder written by `train_reward` (either kind)."""
    path = Path(path)
    if (path / META_FILE).exists():
        from safetensors.torch import load_file

        meta = json.loads((path / META_FILE).read_text())
        backbone, processor = load_model(path, family=meta["family"])
        rm = RewardModel(backbone, meta["family"])
        rm.score_head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return rm.eval(), processor
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path)


def score(model, batch: dict) -> torch.Tensor:
    """One scalar reward per row of a collated batch (PairCollator / SFTCollator / PromptCollator output)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "completion_mask", "examples")}
    if isinstance(model, RewardModel):
        return model(**inputs)
    if isinstance(_base(model), transformers.PreTrainedModel) and hasattr(_base(model), "score"):
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, 0]
    raise TypeError(f"score: {type(model).__name__} is not a reward model (RewardModel or *ForSequenceClassification)")
