"""The generation engine of every LLF stage: LEFT-padded prompt batches (aa_lib.collators.PromptCollator, which runs
the family's processor on images / video / audio), `model.generate` with the KV cache, and per-row seeded sampling
(`_RowSampler`), so that a row's sample depends on (seed, row key) only, not on its batch or the batch order.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from aa_lib import progress
from aa_lib.collators import PromptCollator
from aa_lib.models import family_for_model_type

MEDIA_COLUMNS = ("images", "audios", "videos")


# ---------------------------------------------------------------------------------------------------- generation
@dataclass
class GenerationOptions:
    """How `generate` decodes (a small subset of transformers.GenerationConfig, plus prompt handling)."""

    max_new_tokens: int = field(default=64, metadata={"help": "Most new tokens per response."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (per-row seeded) instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Keep the k most likely tokens when sampling (0: all)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0: off)."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "Longest prompt in tokens (None: any); "
                                                                          "a longer one is an error."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames sampled per video (None: all)."})


@dataclass
class Generation:
    text: str
    n_tokens: int  # new tokens, EOS included
    finished: bool  # ended with EOS (False: cut at max_new_tokens)


class _RowSampler:
    """A logits processor that samples each row with its own torch.Generator and returns a one-hot score, so that
    greedy selection in `model.generate` picks exactly that sample. Rows keep their random streams whatever batch
    they are in."""

    def __init__(self, seeds: list[int], opts: GenerationOptions):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.opts = opts

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / max(self.opts.temperature, 1e-6)
        if self.opts.top_k and self.opts.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.opts.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.opts.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.opts.top_p  # keep the smallest prefix reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        out = torch.full_like(scores, float("-inf"))
        cdf = probs.cpu().double().cumsum(-1)
        for i, g in enumerate(self.gens):
            u = torch.rand((), generator=g, dtype=torch.float64) * cdf[i, -1]
            tok = int(torch.searchsorted(cdf[i], u.reshape(1), right=True).clamp(max=cdf.shape[1] - 1))
            out[i, tok] = 0.0
        return out


def _fingerprint(value) -> str:
    """A stable text for a media value (PIL image, array, {"bytes","path"} dict, path) or messages."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return hashlib.sha1(value.convert("RGB").tobytes() + str(value.size).encode()).hexdigest()
    if isinstance(value, np.ndarray):
        return hashlib.sha1(value.tobytes() + str(value.shape).encode()).hexdigest()
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return hashlib.sha1(value["bytes"]).hexdigest()
        if value.get("array") is not None:
            return _fingerprint(np.asarray(value["array"]))
        return _fingerprint(value.get("path"))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fingerprint(v) for v in value) + "]"
    if isinstance(value, bytes):
        return hashlib.sha1(value).hexdigest()
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        # A media file by its content, not its path: the same clip in another checkout (or on another machine,
        # under another folder) must draw the same samples.
        stat = os.stat(value)
        return _file_digest(os.path.realpath(value), stat.st_size, stat.st_mtime_ns)
    return json.dumps(value, sort_keys=True, default=str)


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha1 of a file's bytes (memoized per path, size and mtime: a synthesis asks for each prompt's key often)."""
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def example_key(example: dict) -> str:
    """A stable id of a prompt: its messages and media (not its position in a dataset)."""
    parts = [_fingerprint(example.get("prompt"))] + [_fingerprint(example.get(k) or []) for k in MEDIA_COLUMNS]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def seed_of(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def _as_options(options) -> GenerationOptions:
    if options is None:
        return GenerationOptions()
    if isinstance(options, GenerationOptions):
        return options
    if isinstance(options, dict):
        return GenerationOptions(**options)
    keep = {f: getattr(options, f) for f in GenerationOptions.__dataclass_fields__ if hasattr(options, f)}
    return GenerationOptions(**{k: v for k, v in keep.items() if v is not None})  # a transformers GenerationConfig


def generate_detailed(model, processor, examples: list[dict], options=None, batch_size: int = 8, seed: int = 0,
                      keys: list[str] | None = None, collator: PromptCollator | None = None) -> list[Generation]:
    """`generate`, also saying per response how many tokens it took and whether it ended with EOS."""
    import transformers

    opts = _as_options(options)
    examples = list(examples)
    if keys is None:  # content keys; repeats of one prompt get distinct streams by their occurrence
        seen: dict[str, int] = {}
        keys = []
        for ex in examples:
            k = example_key(ex)
            seen[k] = seen.get(k, -1) + 1
            keys.append(f"{k}#{seen[k]}")
    if len(keys) != len(examples):
        raise ValueError(f"generate: {len(keys)} keys for {len(examples)} examples")
    family = family_for_model_type(model.config.model_type)
    collator = collator or PromptCollator(processor, family, max_length=opts.max_prompt_length,
                                          num_frames=opts.num_frames)
    tok = collator.tokenizer
    gen_cfg = transformers.GenerationConfig(
        max_new_tokens=opts.max_new_tokens, do_sample=False, use_cache=True,
        eos_token_id=model.generation_config.eos_token_id or tok.eos_token_id,
        pad_token_id=collator.pad_id, bos_token_id=model.generation_config.bos_token_id,
        # responses are text: a media placeholder would be dropped from the decoded text anyway
        suppress_tokens=sorted(collator.media_ids) or None)
    eos = gen_cfg.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Generation] = []
    try:
        for start in progress.bar(range(0, len(examples), batch_size), desc="generate", unit="batch"):
            chunk = examples[start:start + batch_size]
            batch = collator(chunk)
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            procs = None
            if opts.do_sample:
                procs = transformers.LogitsProcessorList(
                    [_RowSampler([seed_of(seed, k) for k in keys[start:start + len(chunk)]], opts)])
            with torch.no_grad():
                seqs = model.generate(**batch, generation_config=gen_cfg, logits_processor=procs)
            new = seqs[:, batch["input_ids"].shape[1]:].cpu()
            for row in new.tolist():
                end = next((j for j, t in enumerate(row) if t in eos_ids), None)  # the first EOS
                n = len(row) if end is None else end + 1
                out.append(Generation(tok.decode(row[:n], skip_special_tokens=True).strip(), n, end is not None))
    finally:
        model.train(was_training)
    return out


def generate(model, processor, examples: list[dict], options=None, batch_size: int = 8, seed: int = 0,
             keys: list[str] | None = None) -> list[str]:
    """Responses of `model` to prompt examples (`prompt` messages + `images` / `audios` / `videos`).

    Prompts are LEFT padded in batches of `batch_size` and decoded with the KV cache. With `options.do_sample`
    each row samples from its own generator, seeded by `seed` and the row's key (default: the prompt's content),
    so the same seed gives the same outputs in any batching or order.
    """
    return [g.text for g in generate_detailed(model, processor, examples, options, batch_size, seed, keys)]
