"""Image outputs (T2I, TI2TI): SFT, generation, DPO and PPO on the VQ codes of images, for Janus and Chameleon.

Public API (aa_lib.policies.ImagePolicy calls these for t2i / ti2ti); each trainer returns a full model folder:
- `train_image_sft`: next-token loss on the response (text tokens and the target image's VQ codes; prompt masked).
- `train_image_dpo`: DPO on image outputs.
- `generate_images` -> list of (H, W, 3) uint8 arrays (32x32 for tiny models). Janus only: Chameleon has no VQ
  decoder in transformers. Each prompt's images depend on (seed, its position in `prompts`) only, not on batch_size.
- `train_image_ppo`: clipped policy gradient on sampled image codes with a KL penalty to the frozen start model
  (Janus); `rubric_reward` scores mini prompts.
- `train_image_tokenizer` (tiny profile only): fits the Janus VQ autoencoder to the mini world's images. A tiny
  model is built from random weights, so without this step its VQ decoder maps every code sequence to noise and no
  amount of policy training can draw a shape. Real Janus checkpoints ship a trained VQ model: never call it in the
  `paper` profile.

Data: the `aa_lib.data` layouts. SFT rows: `prompt`, `completion` (assistant turn: [text,] image part), and either
`completion_images` or `images` = prompt images followed by the response image (`to_sft`). DPO rows (`to_preference`):
`prompt`, `chosen` / `rejected`, `chosen_images` / `rejected_images`, `images` (ti2ti input image).

Sequence layout (both families, built by `aa_lib.collators.ImageOutputSFTCollator`): prompt, [response text],
begin-of-image, N image slots, end-of-image, EOS. The log-probability of a response is the sum over its tokens:
- Janus: image codes from `generation_head` (log-softmax over the VQ codebook), with the codes entering through
  `generation_embeddings` + `generation_aligner` (exactly as `generate(..., generation_mode="image")` feeds them);
  text, begin/end-of-image and EOS from `lm_head`. Prompt images go through the understanding path
  (`vision_model` + `aligner`).
- Chameleon: image codes from `lm_head` restricted to the image-token rows of the vocabulary (image-generation
  mode samples only those); text from `lm_head` with the image rows removed (what `ChameleonForConditionalGeneration`
  does). transformers' forward sets image logits to -inf, so both are computed here from the hidden states.
TI2TI sums the text-token and image-token log-probs of the response: a pair differing only in the image differs
only in the image term, and vice versa. The VQ encoder is always frozen (argmax quantisation passes no gradient).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from aa_lib import progress
from aa_lib.collators import (CollatorError, ImageOutputSFTCollator, completion_text, count_media_parts,
                              example_name)
from aa_lib.models import get_family, janus_decode_images, load_model
from aa_lib.train.common import AAOptions, as_dataset, load_for_training, load_reference, save_trained
from aa_lib.train.launch import launchable

FAMILIES_WITH_IMAGE_OUTPUT = ("janus", "chameleon")


# ------------------------------------------------------------------------------------------------------------- Configs
@dataclass
class ImageSFTConfig(AAOptions, transformers.TrainingArguments):
    """transformers.TrainingArguments plus aa_lib's options, for image-output SFT (t2i, ti2ti)."""

    max_length: int | None = field(default=None, metadata={"help": "Maximum tokens per row (image tokens are "
                                                                  "never truncated: a longer row raises)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the raw columns (the collator "
                                                                         "needs prompts and images)."})


@dataclass
class ImageDPOConfig(ImageSFTConfig):
    """ImageSFTConfig plus the DPO temperature; the loss is -logsigmoid(beta * (Δchosen - Δrejected)) (SPEC §4)."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature beta (the paper uses 0.1)."})


# ------------------------------------------------------------------------------------------------ Examples and batches
def _output_example(ex: dict, index: int, side: str | None = None) -> dict:
    """One image-output example in the collator's layout: prompt, completion, completion_images, images (prompt).

    side None: an SFT row (`completion_images`, or `images` = prompt images + response image as `to_sft` writes).
    side "chosen"/"rejected": that response of a `to_preference` row.
    """
    name = example_name(ex, index)
    if "prompt" not in ex:
        raise CollatorError(f"{name}: image-output training needs a 'prompt' column; got {sorted(ex)}")
    prompt = ex["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    n_prompt = count_media_parts(prompt)["image"] if isinstance(prompt, list) else 0
    images = list(ex.get("images") or [])
    if side is not None:
        if f"{side}_images" not in ex or side not in ex:
            raise CollatorError(f"{name}: image DPO needs columns {side!r} and '{side}_images'; got {sorted(ex)}")
        completion, targets = ex[side], list(ex[f"{side}_images"] or [])
    elif "completion_images" in ex:
        completion, targets = ex.get("completion"), list(ex["completion_images"] or [])
    else:
        completion, targets = ex.get("completion"), images[n_prompt:]
        images = images[:n_prompt]
    if len(images) != n_prompt:
        raise CollatorError(f"{name}: {len(images)} prompt image(s) in 'images' but {n_prompt} image "
                            f"placeholder(s) in the prompt")
    out = {"prompt": prompt, "completion": completion or [], "completion_images": targets, "images": images}
    return {**out, **{key: ex[key] for key in ("aa_row", "row", "id") if key in ex}}


@dataclass
class ImageOutputCollator:
    """SFT rows -> one ImageOutputSFTCollator batch; preference rows -> {"chosen": batch, "rejected": batch}."""

    processor: object
    family: str
    max_length: int | None = None
    pairs: bool = False

    def __post_init__(self):
        self.inner = ImageOutputSFTCollator(self.processor, self.family, max_length=self.max_length)

    def __call__(self, examples: list[dict]) -> dict:
        if not self.pairs:
            return self.inner([_output_example(ex, i) for i, ex in enumerate(examples)])
        return {side: self.inner([_output_example(ex, i, side) for i, ex in enumerate(examples)])
                for side in ("chosen", "rejected")}


# ------------------------------------------------------------------------------------------ Response log-probabilities
def janus_codes(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, N) VQ code ids of normalised images (the frozen VQ encoder of a Janus model)."""
    with torch.no_grad():
        out = model.model.vqmodel.encode(pixel_values.to(model.dtype), return_dict=True)
    return out.image_tokens.view(len(pixel_values), -1).long()


def _split_pixels(batch: dict, prompt_img: torch.Tensor, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values hold, row by row, the prompt images then the target image: split them apart."""
    per_row = (prompt_img.sum(1) // n_slots).tolist()
    is_target = []
    for k in per_row:
        is_target += [False] * int(k) + [True]
    is_target = torch.tensor(is_target, device=batch["pixel_values"].device)
    if len(is_target) != len(batch["pixel_values"]):
        raise ValueError(f"pixel_values has {len(batch['pixel_values'])} images, the placeholders ask for "
                         f"{len(is_target)}")
    return batch["pixel_values"][~is_target], batch["pixel_values"][is_target]


def _janus_hidden(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states of a Janus image-output batch, the image slots fed with the target's code embeddings.

    Returns (hidden (B, L, H), labels (B, L) with codes in the image slots, image slot mask (B, L)).
    """
    ids, target = batch["input_ids"], batch["image_target_mask"]
    n_slots = model.config.vision_config.num_image_tokens
    prompt_img = (ids == model.config.image_token_id) & ~target
    prompt_pv, target_pv = _split_pixels(batch, prompt_img, n_slots)
    codes = janus_codes(model, target_pv)
    pad = model.generation_config.pad_token_id or 0
    embeds = model.get_input_embeddings()(ids.masked_fill(prompt_img | target, pad)).clone()
    if prompt_img.any():  # understanding path for input images (ti2ti)
        feats = model.model.get_image_features(prompt_pv.to(embeds.dtype), return_dict=True).pooler_output
        embeds[prompt_img] = feats.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    embeds[target] = model.prepare_embeddings_for_image_generation(codes).reshape(-1, embeds.shape[-1])
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                        use_cache=False).last_hidden_state
    labels = batch["labels"].clone()
    labels[target] = codes.flatten()
    return hidden, labels, target


def _chameleon_hidden(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states of a Chameleon image-output batch: every image placeholder replaced by its VQ token id."""
    ids, target = batch["input_ids"].clone(), batch["image_target_mask"]
    placeholder = ids == model.model.vocabulary_mapping.image_token_id
    with torch.no_grad():
        codes = model.model.vqmodel.encode(batch["pixel_values"].to(model.dtype), return_dict=True).image_tokens.long()
    ids[placeholder] = _chameleon_image_rows(model)[codes].view(-1)
    hidden = model.model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    labels = batch["labels"].clone()
    slots = torch.full(placeholder.shape, -1, dtype=torch.long, device=placeholder.device)
    slots[placeholder] = codes.flatten().to(placeholder.device)  # code index (0..K-1) per slot, row-major
    labels[target] = slots[target]
    return hidden, labels, target


def _chameleon_image_rows(model) -> torch.Tensor:
    """Vocabulary ids of Chameleon's image tokens, indexed by VQ code."""
    return model.model.vocabulary_mapping.img2bpe_mapping_tensor.long().to(model.device)


def response_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the response of an image-output batch (text tokens and image codes).

    Returns (logps (B, L-1), mask (B, L-1) of response tokens, image mask (B, L-1) of image-code tokens); position t
    holds log p(token t+1 | tokens <= t). See the module docstring for the heads used per family.
    """
    family = model.config.model_type
    if family not in FAMILIES_WITH_IMAGE_OUTPUT:
        raise ValueError(f"image outputs need a model family that produces images "
                         f"({', '.join(FAMILIES_WITH_IMAGE_OUTPUT)}), not {family}")
    hidden, labels, target = (_janus_hidden if family == "janus" else _chameleon_hidden)(model, batch)
    h, lab, img = hidden[:, :-1], labels[:, 1:], target[:, 1:]
    mask = lab != -100
    txt = mask & ~img
    logps = torch.zeros(lab.shape, dtype=torch.float32, device=h.device)
    txt_logits, txt_labels = model.lm_head(h[txt]).float(), lab[txt]
    if family == "janus":
        img_logits = model.model.generation_head(h[img]).float()
    else:
        rows = _chameleon_image_rows(model)
        img_logits = (h[img] @ model.lm_head.weight[rows].T).float()
        txt_logits[:, rows] = float("-inf")  # text positions never sample image tokens
        if bool(torch.isin(txt_labels, rows).any()):
            raise ValueError("an image token id appears in a response's text tokens")
    logps[img] = img_logits.log_softmax(-1).gather(-1, lab[img][:, None]).squeeze(-1)
    logps[txt] = txt_logits.log_softmax(-1).gather(-1, txt_labels[:, None]).squeeze(-1)
    return logps, mask, img


# ----------------------------------------------------------------------------------------------------------------- SFT
class _LogsStats(transformers.Trainer):
    """Adds the last step's `_stats` (set in compute_loss) to every loss log."""

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            logs.update(getattr(self, "_stats", {}))
        super().log(logs, *args, **kwargs)


class ImageSFTTrainer(_LogsStats):
    """Cross-entropy on the response (image codes + any text), prompt masked; Janus and Chameleon."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, mask, img = response_logps(model, inputs)
        loss = -(logps * mask).sum() / mask.sum().clamp(min=1)
        with torch.no_grad():
            self._stats = {"code_loss": float(-(logps * img).sum() / img.sum().clamp(min=1))}
        return (loss, {"logps": logps}) if return_outputs else loss


def _load(model_path, config: AAOptions):
    model, processor, family = load_for_training(model_path, config)
    if family not in FAMILIES_WITH_IMAGE_OUTPUT:
        raise ValueError(f"{model_path}: image-output training needs family janus or chameleon, not {family}")
    model.model.vqmodel.requires_grad_(False)  # argmax quantisation: the VQ encoder never gets a gradient
    if config.lora_r:
        raise NotImplementedError("image-output training trains full weights (lora_r must be 0)")
    return model, processor, family


def build_image_sft_trainer(config: ImageSFTConfig, model_path, dataset) -> ImageSFTTrainer:
    model, processor, family = _load(model_path, config)
    collator = ImageOutputCollator(processor, family, max_length=config.max_length)
    return ImageSFTTrainer(model=model, args=config, train_dataset=as_dataset(dataset), data_collator=collator,
                           processing_class=processor)


@launchable
def train_image_sft(config: ImageSFTConfig, model_path, dataset) -> Path:
    """Image-output SFT from `model_path` on `dataset`; the full model folder goes to `config.output_dir`."""
    trainer = build_image_sft_trainer(config, model_path, dataset)
    trainer.train()
    return save_trained(trainer.model, trainer.processing_class, config.output_dir, source_path=model_path)


# ----------------------------------------------------------------------------------------------------------------- DPO
class ImageDPOTrainer(_LogsStats):
    """DPO on image outputs: -logsigmoid(beta * ((π_c - ref_c) - (π_r - ref_r))), log-probs summed per response."""

    def __init__(self, *args, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ref_model = ref_model.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pol, ref = {}, {}
        for side in ("chosen", "rejected"):
            lp, mask, _ = response_logps(model, inputs[side])
            pol[side] = (lp * mask).sum(-1)
            with torch.no_grad():
                lp, mask, _ = response_logps(self.ref_model, inputs[side])
                ref[side] = (lp * mask).sum(-1)
        margin = (pol["chosen"] - ref["chosen"]) - (pol["rejected"] - ref["rejected"])
        loss = -F.logsigmoid(self.args.beta * margin).mean()
        self._stats = {"rewards/margins": float(self.args.beta * margin.detach().mean()),
                       "rewards/accuracies": float((margin > 0).float().mean())}
        return (loss, {"margin": margin}) if return_outputs else loss


def build_image_dpo_trainer(config: ImageDPOConfig, model_path, dataset, ref_model_path=None) -> ImageDPOTrainer:
    model, processor, family = _load(model_path, config)
    ref = load_reference(ref_model_path or model_path, family)
    collator = ImageOutputCollator(processor, family, max_length=config.max_length, pairs=True)
    return ImageDPOTrainer(model=model, ref_model=ref, args=config, train_dataset=as_dataset(dataset),
                           data_collator=collator, processing_class=processor)


@launchable
def train_image_dpo(config: ImageDPOConfig, model_path, dataset, ref_model_path=None) -> Path:
    """DPO on image outputs from `model_path` (reference: `ref_model_path`, default the same folder, frozen)."""
    trainer = build_image_dpo_trainer(config, model_path, dataset, ref_model_path)
    trainer.train()
    return save_trained(trainer.model, trainer.processing_class, config.output_dir, source_path=model_path,
                        log_history=trainer.state.log_history)


# -------------------------------------------------------------------------------------------------- Generation (Janus)
def prompt_example(p, index: int) -> dict:
    """A prompt for generation: a string, a list of messages, or a dict with `prompt` (+ `images`, `completion`)."""
    if isinstance(p, str):
        return {"prompt": [{"role": "user", "content": [{"type": "text", "text": p}]}], "images": []}
    if isinstance(p, list):
        return {"prompt": p, "images": []}
    if isinstance(p, dict) and "prompt" in p:
        return _output_example({**p, "completion_images": []}, index)
    raise CollatorError(f"prompt #{index}: expected a string, a message list or a dict with 'prompt', got "
                        f"{type(p).__name__}")


def generation_batch(model, processor, examples: list[dict]) -> dict:
    """Left-padded prompts ending with begin-of-image (+ ti2ti response text before it), with input images."""
    coll = ImageOutputSFTCollator(processor, "janus")
    tok = coll.tokenizer
    boi = tok.convert_tokens_to_ids(get_family("janus").media_tokens["boi_token"])
    rows, pvs = [], []
    for i, ex in enumerate(examples):
        ids, media = coll._encode_prompt(ex["prompt"], ex, example_name(ex, i))
        text = completion_text(ex.get("completion"))
        if text:
            ids = ids + tok(" " + text, add_special_tokens=False)["input_ids"]
        rows.append(ids + [boi])
        if "pixel_values" in media:
            pvs.append(media["pixel_values"])
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        am[i, width - len(r):] = 1
    out = {"input_ids": ids, "attention_mask": am}
    if pvs:
        out["pixel_values"] = torch.cat(pvs)
    return out


def prompt_embeds(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input embeddings, input ids, attention mask) of a left-padded Janus prompt batch, input images embedded
    through the understanding path."""
    device = model.device
    ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    image_tok = model.config.image_token_id
    pad = model.generation_config.pad_token_id or 0
    embeds = model.get_input_embeddings()(ids.masked_fill(ids == image_tok, pad))
    if (ids == image_tok).any():
        feats = model.model.get_image_features(batch["pixel_values"].to(device, embeds.dtype),
                                               return_dict=True).pooler_output
        embeds = embeds.clone()
        embeds[ids == image_tok] = feats.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    return embeds, ids, am


def janus_code_logps(model, batch: dict, codes: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, N) log-probs of image `codes` after left-padded prompts ending with begin-of-image (teacher forced;
    the distribution `sample_image_codes` samples from at the same temperature, without guidance)."""
    embeds, ids, am = prompt_embeds(model, batch)
    codes = codes.to(model.device)
    embeds = torch.cat([embeds, model.prepare_embeddings_for_image_generation(codes)], dim=1)
    am = torch.cat([am, torch.ones_like(codes)], dim=1)
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=am, position_ids=pos,
                                        use_cache=False).last_hidden_state
    L, N = ids.shape[1], codes.shape[1]
    logits = model.model.generation_head(hidden[:, L - 1:L - 1 + N]).float()
    if temperature not in (0, 1.0):
        logits = logits / temperature
    return logits.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)


@torch.no_grad()
def decode(model, embeds, am, steps: int, head, embed, generators: list[torch.Generator], temperature: float = 1.0,
           cfg_weight: float = 1.0, stops: torch.Tensor | None = None, pad: int = 0) -> torch.Tensor:
    """(B, steps) tokens sampled from a Janus language model after left-padded prompt embeddings `embeds` (mask
    `am`; with guidance the unconditional rows follow the B conditional ones): `head` turns a hidden state into
    logits, `embed` a (B, 1) token batch into the next inputs. temperature 0 is greedy; `generators[i]` samples row
    i. cfg_weight != 1: logits = uncond + w * (cond - uncond). A row stops at a token in `stops` (then `pad`)."""
    lm = model.model.language_model
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    out = lm(inputs_embeds=embeds, attention_mask=am, position_ids=pos, use_cache=True)
    cache, pos = out.cache, pos[:, -1:]
    B = len(generators)
    toks = torch.full((B, steps), pad, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    for k in range(steps):
        logits = head(out.last_hidden_state[:, -1]).float()
        if cfg_weight != 1.0:
            cond, unc = logits.chunk(2)
            logits = unc + cfg_weight * (cond - unc)
        logits = logits.cpu()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = (logits / temperature).softmax(-1)
            nxt = torch.cat([torch.multinomial(probs[i], 1, generator=generators[i]) for i in range(B)])
        if stops is not None:
            nxt = nxt.masked_fill(done, pad)
            done |= torch.isin(nxt, stops)
        toks[:, k] = nxt
        if bool(done.all()):
            break
        step = nxt.to(model.device).repeat(2 if cfg_weight != 1.0 else 1)[:, None]
        am = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
        pos = pos + 1
        out = lm(inputs_embeds=embed(step), attention_mask=am, position_ids=pos, cache=cache, use_cache=True)
        cache = out.cache
    return toks


@torch.no_grad()
def sample_image_codes(model, batch: dict, generators: list[torch.Generator], temperature: float = 1.0,
                       cfg_weight: float = 1.0) -> torch.Tensor:
    """(B, N) VQ codes sampled from Janus's generation head after left-padded prompts ending with begin-of-image.

    cfg_weight > 1 adds classifier-free guidance as Janus does: the unconditional rows keep only BOS and
    begin-of-image (every other token becomes pad), logits = uncond + w * (cond - uncond). temperature 0 is greedy.
    """
    embeds, ids, am = prompt_embeds(model, batch)
    if cfg_weight != 1.0:
        keep = (ids == model.generation_config.bos_token_id) | (
            ids == model.generation_config.generation_kwargs["boi_token_id"])
        uncond = model.get_input_embeddings()(ids.masked_fill(~keep, model.generation_config.pad_token_id or 0))
        embeds, am = torch.cat([embeds, uncond]), torch.cat([am, am])
    return decode(model, embeds, am, model.config.vision_config.num_image_tokens, model.model.generation_head,
                  model.prepare_embeddings_for_image_generation, generators, temperature, cfg_weight)


def generate_images(model, processor, prompts, seed: int = 0, batch_size: int = 8, temperature: float = 1.0,
                    cfg_weight: float = 1.0, return_codes: bool = False):
    """Images for `prompts` (strings, message lists, or dicts with `prompt` [+ `images`, `completion` text]):
    list of (H, W, 3) uint8 arrays, in prompt order. Janus only (see the module docstring)."""
    if model.config.model_type != "janus":
        raise ValueError(f"generate_images needs a Janus model (Chameleon has no VQ decoder in transformers), "
                         f"got {model.config.model_type}")
    examples = [prompt_example(p, i) for i, p in enumerate(prompts)]
    was_training = model.training
    model.eval()
    images, all_codes = [], []
    try:
        for start in progress.bar(range(0, len(examples), batch_size), desc="generate images", unit="batch"):
            chunk = examples[start:start + batch_size]
            gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + start + i) for i in range(len(chunk))]
            codes = sample_image_codes(model, generation_batch(model, processor, chunk), gens, temperature,
                                       cfg_weight)
            all_codes.append(codes)
            images += [np.asarray(im.convert("RGB"), dtype=np.uint8)
                       for im in janus_decode_images(model, processor, codes.to(model.device))]
    finally:
        model.train(was_training)
    return (images, torch.cat(all_codes)) if return_codes else images


# ------------------------------------------------------------------------------------- PPO on generated images (Janus)
@dataclass
class ImagePPOConfig(AAOptions):
    """A compact PPO loop on sampled image codes: clipped ratio objective per code, KL penalty to the start model."""

    output_dir: str = field(default="image_ppo", metadata={"help": "Where the trained policy folder goes."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    num_iterations: int = field(default=20, metadata={"help": "Sample -> score -> update rounds."})
    prompts_per_iteration: int = field(default=8, metadata={"help": "Prompts drawn (with replacement) per round."})
    samples_per_prompt: int = field(default=2, metadata={"help": "Images sampled per prompt; advantages are rewards "
                                                               "minus the mean of the round, over their std."})
    ppo_epochs: int = field(default=2, metadata={"help": "Optimizer steps on each round's samples."})
    clip_range: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon."})
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the per-code KL to the reference (k3 "
                                                          "estimator, as in GRPO)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (no guidance while training)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})


def rubric_reward(examples: list[dict], images: list[np.ndarray]) -> list[float]:
    """Mini-world reward: the rubric's overall score of each image for its row's hidden truth (`mini_meta`)."""
    from aa_lib import mini

    out = []
    for i, (ex, img) in enumerate(zip(examples, images)):
        if "mini_meta" not in ex:
            raise KeyError(f"{example_name(ex, i)}: rubric_reward needs the row's 'mini_meta' column")
        out.append(float(mini.rubric_score(ex["mini_meta"], img)["overall"]))
    return out


def train_image_ppo(config: ImagePPOConfig, model_path, prompts, reward_fn: Callable = rubric_reward,
                    log: Callable[[dict], None] | None = None) -> Path:
    """PPO for T2I (Janus) from `model_path`: `prompts` are dicts with `prompt` (string or messages; + whatever
    `reward_fn(examples, images) -> list[float]` reads, e.g. `mini_meta`). The reference is the start model, frozen.

    Each round samples `samples_per_prompt` images per prompt, scores them, normalises the rewards within the round
    (the mean is the baseline), then takes `ppo_epochs` steps of the clipped objective on the per-code ratios
    pi/pi_old plus kl_coef * KL(pi || ref). Returns the saved folder; per-round stats go to `log` (and the folder's
    aa_image_ppo.json).
    """
    if config.num_processes > 1:  # its loop is plain PyTorch: N processes would train N unrelated copies
        raise ValueError(f"train_image_ppo runs in one process; num_processes is {config.num_processes}")
    policy, processor, family = _load(model_path, config)
    if family != "janus":
        raise ValueError(f"train_image_ppo samples images, which needs Janus, not {family}")
    ref = load_reference(model_path, family)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    examples = [p if isinstance(p, dict) else {"prompt": p} for p in prompts]
    history = []
    for it in range(config.num_iterations):
        pick = rng.integers(len(examples), size=config.prompts_per_iteration)
        chunk = [examples[i] for i in pick for _ in range(config.samples_per_prompt)]
        batch = generation_batch(policy, processor, [prompt_example(e, i) for i, e in enumerate(chunk)])
        gens = [torch.Generator().manual_seed(config.seed * 1_000_003 + it * 10_007 + i) for i in range(len(chunk))]
        policy.eval()
        codes = sample_image_codes(policy, batch, gens, config.temperature)
        images = [np.asarray(im.convert("RGB")) for im in janus_decode_images(policy, processor,
                                                                               codes.to(policy.device))]
        policy.train()
        rewards = torch.tensor(reward_fn(chunk, images), dtype=torch.float32)
        adv = ((rewards - rewards.mean()) / (rewards.std() + 1e-6)).to(policy.device)[:, None]
        with torch.no_grad():
            old = janus_code_logps(policy, batch, codes, config.temperature)
            ref_lp = janus_code_logps(ref, batch, codes, config.temperature)
        for _ in range(config.ppo_epochs):
            new = janus_code_logps(policy, batch, codes, config.temperature)
            ratio = (new - old).exp()
            pg = -torch.min(ratio * adv, ratio.clamp(1 - config.clip_range, 1 + config.clip_range) * adv).mean()
            d = ref_lp - new
            kl = (d.exp() - d - 1).mean()
            loss = pg + config.kl_coef * kl
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
        stats = {"iteration": it, "reward_mean": float(rewards.mean()), "loss": float(loss.detach()),
                 "kl": float(kl.detach())}
        history.append(stats)
        if log is not None:
            log(stats)

    def extra(tmp: Path):
        (tmp / "aa_image_ppo.json").write_text(json.dumps(history))

    return save_trained(policy, processor, config.output_dir, source_path=model_path, extra=extra)


# ---------------------------------------------------------- Tiny profile: fit the VQ autoencoder to the world's images
def train_image_tokenizer(model_path, images, out_dir, steps: int = 400, batch_size: int = 32, lr: float = 2e-3,
                          commitment: float = 0.25, seed: int = 0, max_seconds: float | None = None,
                          foreground_weight: float = 8.0, revive_every: int = 25) -> Path:
    """Fit a tiny Janus model's VQ autoencoder (encoder, codebook, decoder) to `images`; the model folder with the
    trained VQ goes to `out_dir` (every other weight unchanged). Tiny profile only.

    The codebook is kept L2-normalised during training and written back normalised, because Janus's decoder reads
    normalised codebook entries while its encoder picks codes by distance to the raw entries: with unit entries
    the two agree, so `vqmodel.encode` and `decode_image_tokens` stay each other's inverse.
    Loss: MSE reconstruction + commitment * ||z - sg(e)||^2 + ||sg(z) - e||^2, straight-through gradients.
    The reconstruction error of shape pixels weighs `foreground_weight` times a background pixel's, and unused codes
    are moved onto random encoder outputs every `revive_every` steps. Why: shapes cover ~10% of a 32x32 image, and
    with plain MSE a 64-256 code book spends its codes on shape outlines and background patches first; every code
    then decodes to the mean colour of the shapes it covers (measured: 300 steps, colour read right on 17-35% of
    reconstructions, below the 25% of chance at 64 codes). Reviving codes all along measured better than during the
    first half only; a 3x3-median denoised target (tried earlier) is not needed on clean canonical images.
    """
    model, processor = load_model(model_path, family="janus")
    torch.manual_seed(seed)
    vq = model.model.vqmodel
    vq.train()
    pixels = processor.image_processor(images=[to_pil(im) for im in images], return_tensors="pt")["pixel_values"]
    weight = None
    if foreground_weight != 1.0:
        from aa_lib.mini.world import BACKGROUND

        bg = processor.image_processor(images=[to_pil(np.full((32, 32, 3), BACKGROUND, np.uint8))],
                                       return_tensors="pt")["pixel_values"]
        weight = 1.0 + (foreground_weight - 1.0) * ((pixels - bg).abs().amax(1, keepdim=True) > 0.1).float()
    with torch.no_grad():
        vq.quantize.embedding.weight.copy_(F.normalize(torch.randn_like(vq.quantize.embedding.weight), dim=-1))
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0, losses = time.time(), []
    for step in range(steps):
        pick = torch.randint(len(pixels), (min(batch_size, len(pixels)),), generator=gen)
        x = goal = pixels[pick]
        z = vq.quant_conv(vq.encoder(x))  # (B, D, h, w)
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        book = F.normalize(vq.quantize.embedding.weight, dim=-1)
        idx = torch.cdist(zf, book).argmin(-1)
        q = book[idx]
        qst = zf + (q - zf).detach()
        h = qst.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        recon = vq.decoder(vq.post_quant_conv(h))
        if weight is None:
            rec = F.mse_loss(recon, goal)
        else:
            w = weight[pick]
            rec = (w * (recon - goal) ** 2).sum() / (w.sum() * goal.shape[1])
        loss = rec + commitment * F.mse_loss(zf, q.detach()) + F.mse_loss(q, zf.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % revive_every == 0:  # revive dead codes onto random encoder outputs
            with torch.no_grad():
                used = torch.bincount(idx, minlength=book.shape[0]) > 0
                dead = (~used).nonzero().flatten()
                if len(dead):
                    pick = zf[torch.randint(len(zf), (len(dead),), generator=gen)]
                    vq.quantize.embedding.weight[dead] = F.normalize(pick, dim=-1)
        losses.append(float(loss.detach()))
        if max_seconds is not None and time.time() - t0 > max_seconds:
            break
    with torch.no_grad():
        vq.quantize.embedding.weight.copy_(F.normalize(vq.quantize.embedding.weight, dim=-1))
    vq.eval()

    def extra(tmp: Path):
        (tmp / "aa_image_tokenizer.json").write_text(json.dumps(
            {"steps": len(losses), "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
             "n_images": len(pixels), "seed": seed, "foreground_weight": foreground_weight}))

    return save_trained(model, processor, out_dir, source_path=model_path, extra=extra)


def to_pil(im):
    from aa_lib import media

    if isinstance(im, np.ndarray):
        from PIL import Image

        return Image.fromarray(im.astype(np.uint8)).convert("RGB")
    return media.load_image(im)  # a PIL image, bytes, a path or a {"bytes", "path"} dict
