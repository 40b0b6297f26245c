"""The image policy's own pieces (T2I, TI2TI): its starting point, its SFT targets and how it responds.

`start_model(seed)` is a tiny Janus whose VQ autoencoder is fitted to the mini world's canonical images
(`vq_tokenizer`: one fit per machine, shared by every seed and by t2i and ti2ti, process-safe), `sft_rows` pairs
fresh world prompts with canonical targets, `generate_responses` answers (t2i images; ti2ti text, then the image
conditioned on prompt + text). `aa_lib.policies.ImagePolicy` trains and evaluates it.

Why the SFT targets are "canonical" renders and not the dataset's preferred responses (measured by helper-10: SFT
on the mini rows for ~60 s leaves the rubric score where it was): a row's preferred image is a simulated
respondent's, often with a fault (wrong colour, noise), and even a perfect one carries position jitter, radius spread
and pixel noise, so the 4x4 code grid of a prompt is spread over many codes. Here the target of a prompt is its
hidden truth rendered without noise, jitter or radius spread (the refusal of an unsafe prompt: an empty canvas).
There are only 4 colours x 3 shapes x 4 positions x 3 counts + 1 such images, so each prompt has one code
sequence: a deterministic map a tiny policy can learn in minutes. The VQ is fitted to these 145 images with shape
pixels weighted up (`train_image_tokenizer`), and a 256-code book (a 64-code book decodes every shape in one mean
colour).

Measured (seed 0, 48 held-out prompts, greedy; t2i rubric out of 27): untrained 15.2; SFT 900 steps 21.5 (colour
59%, position 98%, count 70%); VQ round trip of the targets (the ceiling) 22.7; tokenizer fit ~180-240 s (once,
cached). Fragile: the SFT lr sits near its edge (1e-2 does not learn). TI2TI (out of 30; 500 steps on 8000 fresh
rows): untrained 13.9, SFT 18.6 (edit 51%), ceiling 24.0; 800 rows x 10 epochs memorised the rows (held-out 14.9),
so ti2ti trains on 8000 fresh rows. The VQ round trip of the empty canvas does not read as blank (refusal 0%).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from aa_lib import mini, progress
from aa_lib.media import encode_png, write_text_atomic
from aa_lib.mini import world
from aa_lib.mini.render import render, render_image
from aa_lib.mini.world import REFUSAL
from aa_lib.models import build_tiny, load_model

CANONICAL_RADIUS = 6.5  # px at 32 px: area >= 0.6 x the largest radius's (7.5 px), so the rubric's size check passes
CACHE = Path(".cache/image_policy")
VQ_SEED = 0  # the shared tokenizer is fitted once, from the seed-0 tiny Janus (a "pretrained" VQ for every seed)
SUBTASKS = ("t2i", "ti2ti")
TOKENIZER_KEYS = ("vq_codes", "tokenizer_steps", "tokenizer_batch", "tokenizer_lr", "foreground_weight",
                  "tokenizer_seconds")

# Budgets: the shared VQ fit (named by these settings, see `_tokenizer_tag`) and the SFT's fresh rows (`n_train`).
# The seconds are only a safety cap, hit on a much slower machine. "smoke" only checks wiring.
BUDGETS = {
    "tiny": dict(vq_codes=256, tokenizer_steps=754, tokenizer_batch=8, tokenizer_lr=3e-3, foreground_weight=8.0,
                 tokenizer_seconds=400.0, n_train=800),
    "smoke": dict(vq_codes=64, tokenizer_steps=3, tokenizer_batch=4, tokenizer_lr=3e-3, foreground_weight=8.0,
                  tokenizer_seconds=30.0, n_train=8),
}
SUBTASK_BUDGETS: dict[str, dict[str, dict]] = {"ti2ti": {"tiny": dict(n_train=8000)}}  # 800 rows x 10 epochs memorised


def budget_settings(budget: str | dict = "tiny", subtask: str = "t2i") -> dict:
    """The settings of a named budget for `subtask`, or a dict replacing some of them (key "name", default tiny)."""
    _check_subtask(subtask)
    if isinstance(budget, dict):
        bad = set(budget) - set(BUDGETS["tiny"]) - {"name"}
        if bad:
            raise ValueError(f"unknown budget settings {sorted(bad)}; known: {sorted(BUDGETS['tiny'])}")
        base = budget_settings(budget.get("name", "tiny"), subtask)
        return {**base, **{k: v for k, v in budget.items() if k != "name"}}
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    return {**BUDGETS[budget], **SUBTASK_BUDGETS.get(subtask, {}).get(budget, {})}


def _check_subtask(subtask: str):
    if subtask not in SUBTASKS:
        raise ValueError(f"image policies cover subtasks {', '.join(SUBTASKS)}, not {subtask!r}")


# ---------------------------------------------------------------------------------------------- canonical targets
def canonical_image(truth: dict, unsafe: bool = False, size: int = 32) -> np.ndarray:
    """The ideal image for a t2i truth: no noise, no jitter, a fixed radius; an empty canvas refuses."""
    scene = {k: v for k, v in truth.items() if k != "edit"}
    scene.update({"dx": 0.0, "dy": 0.0, "noise": 0.0, "radius": CANONICAL_RADIUS, "harmful": False,
                  "blank": bool(unsafe)})
    return render_image(scene, size)


def canonical_images(size: int = 32) -> list[np.ndarray]:
    """Every canonical image: each colour, shape, position and count 1..3, plus the empty canvas. ti2ti's edited
    images are among them (one shape; an edit changes only its colour or position)."""
    out = [canonical_image({"color": "red", "shape": "circle", "position": "left", "count": 1, "noise_seed": 0},
                           unsafe=True, size=size)]
    for c, s, p, n in itertools.product(world.COLORS, world.SHAPES, world.POSITIONS, (1, 2, 3)):
        out.append(canonical_image({"color": c, "shape": s, "position": p, "count": n, "noise_seed": 0}, size=size))
    return out


def canonical_target(item: dict, size: int = 32):
    """A world item's ideal answer. t2i: the canonical image. ti2ti: (text, image): the faultless respondent's text
    (the item's reference; the refusal of an unsafe request) and the edited scene rendered canonically (an unsafe
    request: an empty canvas), which the rubric scores full marks."""
    if item["subtask"] == "t2i":
        return canonical_image(item["truth"], item["unsafe"], size)
    if item["subtask"] != "ti2ti":
        raise ValueError(f"no canonical image answer for subtask {item['subtask']!r}")
    edited = {**item["truth"], **item["truth"].get("edit", {})}
    return (REFUSAL if item["unsafe"] else item["reference"]), canonical_image(edited, item["unsafe"], size)


@functools.lru_cache(maxsize=1024)
def _canonical_png(color: str, shape: str, position: str, count: int, unsafe: bool) -> bytes:
    """PNG of a canonical image, cached: 145 images, encoded once each instead of once per SFT row."""
    truth = {"color": color, "shape": shape, "position": position, "count": count, "noise_seed": 0}
    return encode_png(canonical_image(truth, unsafe))


def canonical_completion(item: dict) -> tuple[list[dict], list[bytes]]:
    """(completion, completion_images) of an SFT example whose target is the item's canonical answer
    (`canonical_target`): an assistant turn (ti2ti: the text, then an image part; t2i: an image part) and the
    target image as PNG."""
    if item["subtask"] not in SUBTASKS:
        raise ValueError(f"no canonical image answer for subtask {item['subtask']!r}")
    scene = {**item["truth"], **item["truth"].get("edit", {})} if item["subtask"] == "ti2ti" else item["truth"]
    png = _canonical_png(*(scene[a] for a in ("color", "shape", "position", "count")), bool(item["unsafe"]))
    text = None if item["subtask"] == "t2i" else (REFUSAL if item["unsafe"] else item["reference"])
    parts = ([] if text is None else [{"type": "text", "text": text}]) + [{"type": "image", "text": None}]
    return [{"role": "assistant", "content": parts}], [png]


def sft_rows(subtask: str, n: int, seed: int = 0) -> list[dict]:
    """`n` SFT examples of the world's `subtask` prompt distribution with canonical targets, images as PNG bytes
    (a datasets table stores an array as nested lists: fetching a batch of those cost more than the SFT step).

    t2i: `prompt` (text), `completion` (an image part), `completion_images`. ti2ti: `prompt` (a user turn with the
    input image, rendered as the world renders it, then the instruction), `images` (that input image),
    `completion` (the response text, then an image part), `completion_images` (the edited image)."""
    _check_subtask(subtask)
    cfg = world.WorldConfig()
    rng = np.random.default_rng([seed, 7, SUBTASKS.index(subtask) + 2])  # t2i: [seed, 7, 2] as before
    rows = []
    for i in range(n):
        item = world.make_item(rng, subtask, cfg)
        completion, target = canonical_completion(item)
        if subtask == "t2i":
            rows.append({"prompt": item["prompt"], "completion": completion, "completion_images": target,
                         "id": f"t2i-canon-{i}"})
            continue
        rows.append({"prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                             {"type": "text", "text": item["prompt"]}]}],
                     "images": [encode_png(render(item["truth"], cfg.image_size))], "completion": completion,
                     "completion_images": target, "id": f"ti2ti-canon-{i}"})
    return rows


# ---------------------------------------------------------------------------------------------- the shared VQ
def _tokenizer_tag(b: dict) -> str:
    key = {"seed": VQ_SEED, "radius": CANONICAL_RADIUS, "revive": "always", **{k: b[k] for k in TOKENIZER_KEYS}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def _cached_folder(out: Path, build) -> Path:
    """`out` once `build(out)` has written it (its `aa_image_tokenizer.json` marks it complete). Process-safe: a
    caller that finds no folder takes a file lock (filelock) and checks again, so a second process asking at the same
    time waits for the first one's build and reuses it."""
    done = out / "aa_image_tokenizer.json"
    if done.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock"):
        if not done.exists():  # else built by another process while this one waited
            build(out)
    return out


def vq_tokenizer(cache_dir=CACHE, budget: str | dict = "tiny") -> Path:
    """The tiny Janus (seed VQ_SEED) with its VQ fitted to `canonical_images()`: fitted once per machine and
    tokenizer settings, then reused by every seed and by t2i and ti2ti, as a real Janus ships one pretrained VQ.
    Process-safe (`_cached_folder`: a second process waits on a file lock, then reuses the fit); written
    atomically; every fit appends a line to `cache_dir/fits.log`."""
    from aa_lib.train.image_output import train_image_tokenizer

    b = budget_settings(budget)
    cache_dir = Path(cache_dir)

    def build(out: Path):
        base = cache_dir / f"janus-base-s{VQ_SEED}-c{b['vq_codes']}"
        if not (base / "aa_tiny_spec.json").exists():
            build_tiny("janus", base, mini.corpus(), seed=VQ_SEED, vq_codes=b["vq_codes"])
        t0 = time.time()
        train_image_tokenizer(base, canonical_images(), out, steps=b["tokenizer_steps"], lr=b["tokenizer_lr"],
                              batch_size=b["tokenizer_batch"], seed=VQ_SEED, max_seconds=b["tokenizer_seconds"],
                              foreground_weight=b["foreground_weight"])
        log = cache_dir / "fits.log"
        old = log.read_text() if log.exists() else ""
        write_text_atomic(log, old + json.dumps({"folder": out.name, "pid": os.getpid(),
                                                 "seconds": round(time.time() - t0, 1)}) + "\n")

    return _cached_folder(cache_dir / f"janus-vq-{_tokenizer_tag(b)}", build)


def start_model(seed: int = 0, cache_dir=CACHE, budget: str | dict = "tiny") -> Path:
    """The policy's starting point for `seed`: a tiny Janus built with that seed carrying the shared fitted VQ
    (`vq_tokenizer`; for seed VQ_SEED that folder itself). Cached, built under a lock like the VQ."""
    import shutil

    from aa_lib.train.common import save_trained

    vq = vq_tokenizer(cache_dir, budget)
    if seed == VQ_SEED:
        return vq
    b = budget_settings(budget)

    def build(out: Path):
        base = build_tiny("janus", Path(tempfile.mkdtemp(prefix="aa_janus_base_")), mini.corpus(), seed=seed,
                          vq_codes=b["vq_codes"])
        try:
            model, processor = load_model(base, family="janus")
            fitted, fitted_proc = load_model(vq, family="janus")
            if processor.tokenizer.get_vocab() != fitted_proc.tokenizer.get_vocab():
                raise RuntimeError(f"the tokenizer of seed {seed} differs from the fitted VQ's ({vq})")
            model.model.vqmodel.load_state_dict(fitted.model.vqmodel.state_dict())
            save_trained(model, processor, out, source_path=base, extra=lambda tmp: shutil.copy(
                vq / "aa_image_tokenizer.json", tmp / "aa_image_tokenizer.json"))
        finally:
            shutil.rmtree(base, ignore_errors=True)

    return _cached_folder(Path(cache_dir) / f"janus-start-s{seed}-{vq.name.removeprefix('janus-vq-')}", build)


# ---------------------------------------------------------------------------------------------- generation
def _subtask_of(example) -> str:
    if isinstance(example, dict) and "mini_meta" in example:
        meta = example["mini_meta"]
        return (json.loads(meta) if isinstance(meta, str) else meta)["subtask"]
    if isinstance(example, dict) and (example.get("images") or example.get("image")):
        return "ti2ti"
    return "t2i"


def policy_example(example, index: int = 0) -> dict:
    """A generation example ({"prompt": messages, "images": [...]}) from a mini held-out row (`prompt` text +
    `image` for ti2ti), a prompt string, or an example already in that layout (returned as is)."""
    if isinstance(example, str):
        return {"prompt": example, "images": []}
    if not isinstance(example, dict) or "prompt" not in example:
        raise ValueError(f"example #{index}: expected a prompt string or a dict with 'prompt', got "
                         f"{type(example).__name__}")
    if isinstance(example["prompt"], str) and example.get("image") is not None:
        # a ti2ti held-out row: the input image goes before the instruction
        image = example["image"]
        image = image.get("bytes") or image.get("path") if isinstance(image, dict) else image
        return {"prompt": [{"role": "user", "content": [{"type": "image"},
                                                        {"type": "text", "text": example["prompt"]}]}],
                "images": [image]}
    return {"prompt": example["prompt"], "images": list(example.get("images") or [])}


@torch.no_grad()
def generate_texts(model, processor, examples, seed: int = 0, temperature: float = 0.0, max_new_tokens: int = 24,
                   batch_size: int = 8) -> list[str]:
    """Response texts of a Janus policy, decoded until begin-of-image (the image-output layout: prompt, text,
    begin-of-image, codes) or EOS. Prompts are encoded exactly as in image-output SFT and generation (input images
    through the understanding path). temperature 0 is greedy; otherwise each prompt samples from its own generator
    seeded by (seed, its position in `examples`), so results do not depend on batch_size."""
    from aa_lib.train.image_output import decode, generation_batch, prompt_embeds, prompt_example

    exs = [prompt_example(policy_example(e, i), i) for i, e in enumerate(examples)]
    tok = processor.tokenizer
    boi = model.generation_config.generation_kwargs["boi_token_id"]
    was_training = model.training
    model.eval()
    texts = []
    try:
        for start in progress.bar(range(0, len(exs), batch_size), desc="generate", unit="batch"):
            chunk = exs[start:start + batch_size]
            gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + start + i) for i in range(len(chunk))]
            batch = generation_batch(model, processor, chunk)
            batch = {**batch, "input_ids": batch["input_ids"][:, :-1], "attention_mask": batch["attention_mask"][:, :-1]}
            embeds, _, am = prompt_embeds(model, batch)  # the batch ends with begin-of-image: drop it
            new = decode(model, embeds, am, max_new_tokens, model.lm_head, model.get_input_embeddings(), gens,
                         temperature, stops=torch.tensor([boi, tok.eos_token_id]), pad=tok.pad_token_id)
            for row in new.tolist():
                cut = next((j for j, t in enumerate(row) if t in (boi, tok.eos_token_id)), len(row))
                texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return texts


def generate_responses(model, processor, examples, seed: int = 0, temperature: float = 0.0,
                       max_new_tokens: int = 24, batch_size: int = 8, subtask: str | None = None) -> list:
    """Responses of a Janus image policy in the form `mini.rubric_score` takes: t2i a (32, 32, 3) uint8 image per
    example; ti2ti {"text", "image"}: the text first (`generate_texts`), then the image conditioned on the prompt
    and that text. `examples`: mini held-out rows, prompt strings or {"prompt", "images"} examples; the subtask
    comes from `mini_meta` (else: ti2ti when an example has an input image). Batched and seeded as
    `generate_images`."""
    from aa_lib.train.image_output import generate_images

    examples = list(examples)
    if not examples:
        return []
    subtask = subtask or _subtask_of(examples[0])
    _check_subtask(subtask)
    exs = [policy_example(e, i) for i, e in enumerate(examples)]
    if subtask == "t2i":
        return generate_images(model, processor, exs, seed=seed, batch_size=batch_size, temperature=temperature)
    texts = generate_texts(model, processor, exs, seed, temperature, max_new_tokens, batch_size)
    with_text = [{**e, "completion": [{"role": "assistant", "content": [{"type": "text", "text": t}]}]}
                 for e, t in zip(exs, texts)]
    images = generate_images(model, processor, with_text, seed=seed, batch_size=batch_size, temperature=temperature)
    return [{"text": t, "image": im} for t, im in zip(texts, images)]
