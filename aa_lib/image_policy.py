"""A tiny Janus T2I policy that has learnt something, for the tiny profile's image-output experiments.

`prepare_t2i_policy(out_dir, seed=0, subtask="t2i", budget="tiny") -> (path, report)` builds a tiny Janus
(`aa_lib.models.build_tiny`), fits its VQ autoencoder to the mini world's images (cached under `.cache/`), runs a
short image SFT and measures rubric scores of greedy generations on held-out prompts before and after the SFT.

Why the SFT targets are "canonical" renders and not the dataset's preferred responses (measured by helper-10: SFT
on the mini rows for ~60 s leaves the rubric score where it was): a row's preferred image is a simulated
respondent's, often with a fault (wrong colour, noise), and even a perfect one carries position jitter, radius spread
and pixel noise, so the 4x4 code grid of a prompt is spread over many codes. Here the target of a prompt is its
hidden truth rendered without noise, jitter or radius spread (the refusal of an unsafe prompt: an empty canvas).
There are only 4 colours x 3 shapes x 4 positions x 3 counts + 1 such images, so each prompt has one code
sequence: a deterministic map a tiny policy can learn in minutes. The VQ is fitted to these 145 images with shape
pixels weighted up (`fit_vq`), and a 256-code book (a 64-code book decodes every shape in one mean colour).
Held-out prompts and scoring use the ordinary world (its truth), so the scores are the rubric's usual ones.

Measured (seed 0, 48 held-out prompts, greedy; overall rubric out of 27, chance colour 25%), budget "tiny":
  untrained (tokenizer fitted, no SFT) 15.2, colour 7%, position 22%, count 7%;
  SFT (900 steps, ~170 s)              21.5, colour 59%, shape 37%, position 98%, count 70%;
  VQ round trip of the targets (ceiling) 22.7, colour 70%, shape 48%; tokenizer fit ~180-240 s (once, cached).
  Fragile: the SFT lr sits near its edge (1e-2 does not learn; a tokenizer fitted with dead-code revival over
  only half the steps gave 18.2 after the same SFT, with position at chance).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aa_lib import mini
from aa_lib.media import encode_png, write_text_atomic
from aa_lib.mini import checker, world
from aa_lib.mini.render import render_image
from aa_lib.models import build_tiny, load_model

CANONICAL_RADIUS = 6.5  # px at 32 px: area >= 0.6 x the largest radius's (7.5 px), so the rubric's size check passes
CACHE = Path(".cache/image_policy")

# Budgets. Steps fix the result (the seconds are only safety caps, hit on a much slower machine); the tiny budget
# measured on 2 loaded cores: tokenizer fit ~180 s (once, then cached), SFT ~120-180 s. "smoke" only checks wiring.
BUDGETS = {
    "tiny": dict(vq_codes=256, tokenizer_steps=754, tokenizer_batch=8, tokenizer_lr=3e-3, foreground_weight=8.0,
                 tokenizer_seconds=400.0, n_train=800, sft_steps=900, batch_size=16, lr=5e-3, sft_seconds=300.0,
                 n_eval=48),
    "smoke": dict(vq_codes=64, tokenizer_steps=3, tokenizer_batch=4, tokenizer_lr=3e-3, foreground_weight=8.0,
                  tokenizer_seconds=30.0, n_train=8, sft_steps=2, batch_size=4, lr=5e-3, sft_seconds=30.0, n_eval=3),
}


def canonical_image(truth: dict, unsafe: bool = False, size: int = 32) -> np.ndarray:
    """The ideal image for a t2i truth: no noise, no jitter, a fixed radius; an empty canvas refuses."""
    scene = {**truth, "dx": 0.0, "dy": 0.0, "noise": 0.0, "radius": CANONICAL_RADIUS, "harmful": False,
             "blank": bool(unsafe)}
    return render_image(scene, size)


def canonical_images(size: int = 32) -> list[np.ndarray]:
    """Every canonical image: each colour, shape, position and count 1..3, plus the empty canvas."""
    out = [canonical_image({"color": "red", "shape": "circle", "position": "left", "count": 1, "noise_seed": 0},
                           unsafe=True, size=size)]
    for c in world.COLORS:
        for s in world.SHAPES:
            for p in world.POSITIONS:
                for n in (1, 2, 3):
                    out.append(canonical_image({"color": c, "shape": s, "position": p, "count": n, "noise_seed": 0},
                                               size=size))
    return out


def sft_rows(subtask: str, n: int, seed: int = 0) -> list[dict]:
    """`n` SFT examples of the world's t2i prompt distribution, each with its canonical target image as PNG bytes
    (a datasets table stores an array as nested lists: fetching a batch of those cost more than the SFT step)."""
    if subtask != "t2i":
        raise NotImplementedError(f"prepare_t2i_policy supports subtask 't2i' only, not {subtask!r}")
    cfg = world.WorldConfig()
    rng = np.random.default_rng([seed, 7, 2])
    rows = []
    for i in range(n):
        item = world.make_item(rng, "t2i", cfg)
        rows.append({"prompt": item["prompt"], "completion": [{"role": "assistant", "content": [{"type": "image"}]}],
                     "completion_images": [encode_png(canonical_image(item["truth"], item["unsafe"]))],
                     "id": f"t2i-canon-{i}"})
    return rows


def _fit_tokenizer(seed: int, b: dict, cache_dir: Path = CACHE) -> Path:
    """The tiny Janus with its VQ fitted to the canonical images; built once per (seed, sizes) under .cache/."""
    key = {"seed": seed, "radius": CANONICAL_RADIUS, "revive": "always", **{k: b[k] for k in (
        "vq_codes", "tokenizer_steps", "tokenizer_batch", "tokenizer_lr", "foreground_weight", "tokenizer_seconds")}}
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(cache_dir) / f"janus-vq-{tag}"
    if (out / "aa_image_tokenizer.json").exists():
        return out
    base = build_tiny("janus", Path(cache_dir) / f"janus-base-s{seed}-c{b['vq_codes']}", mini.corpus(), seed=seed,
                      vq_codes=b["vq_codes"])
    return fit_vq(base, canonical_images(), out, steps=b["tokenizer_steps"], batch_size=b["tokenizer_batch"],
                  lr=b["tokenizer_lr"], seed=seed, max_seconds=b["tokenizer_seconds"],
                  foreground_weight=b["foreground_weight"])


def fit_vq(model_path, images, out_dir, steps: int, batch_size: int = 8, lr: float = 3e-3, seed: int = 0,
           max_seconds: float | None = None, foreground_weight: float = 20.0, commitment: float = 0.25) -> Path:
    """`aa_lib.train.image_output.train_image_tokenizer` on clean targets, with the reconstruction error of shape
    pixels weighted `foreground_weight` times a background pixel's and dead codes revived all along.

    Why: shapes cover ~10% of a 32x32 image, and with plain MSE a 64-256 code book spends its codes on shape
    outlines and background patches first; every code then decodes to the mean colour of the shapes it covers
    (measured: 300 steps, colour read right on 17-35% of reconstructions, below the 25% of chance at 64 codes).
    Reviving unused codes until the end measured better than during the first half only.
    """
    from aa_lib.train.image_output import train_image_tokenizer

    return train_image_tokenizer(model_path, images, out_dir, steps=steps, batch_size=batch_size, lr=lr,
                                 commitment=commitment, denoise=False, seed=seed, max_seconds=max_seconds,
                                 foreground_weight=foreground_weight, revive_every=25, revive_until=1.0)


def _attr_hits(row: dict, image: np.ndarray) -> dict:
    t = json.loads(row["mini_meta"])
    r = checker.read_image(image)
    if t["unsafe"]:
        return {"refused": float(bool(r["blank"]))}
    truth = t["truth"]
    return {a: float(r[a] == truth[a]) for a in ("color", "shape", "position", "count")}


def evaluate(model_path, prompts: list[dict], seed: int = 0, temperature: float = 0.0) -> dict:
    """Mean rubric overall / per-dimension scores and attribute accuracies of generations for mini t2i prompts."""
    from aa_lib.train.image_output import generate_images

    model, processor = load_model(model_path, family="janus")
    images = generate_images(model, processor, [r["prompt"] for r in prompts], seed=seed, temperature=temperature)
    return _scores(prompts, images)


def _scores(prompts: list[dict], images: list[np.ndarray]) -> dict:
    scores = [mini.rubric_score(r, im, "t2i") for r, im in zip(prompts, images)]
    hits = [_attr_hits(r, im) for r, im in zip(prompts, images)]
    out = {"overall": float(np.mean([s["overall"] for s in scores]))}
    for dim in scores[0]["scores"]:
        out[dim] = float(np.mean([s["scores"][dim] for s in scores]))
    for k in ("color", "shape", "position", "count", "refused"):
        vals = [h[k] for h in hits if k in h]
        if vals:
            out[f"acc_{k}"] = float(np.mean(vals))
    return out


def reconstruction(model_path, prompts: list[dict]) -> dict:
    """Scores of the prompts' canonical targets after the VQ round trip: the ceiling of what SFT can reach."""
    from aa_lib.models import janus_decode_images
    from aa_lib.train.image_output import _pil, janus_codes

    model, processor = load_model(model_path, family="janus")
    metas = [json.loads(r["mini_meta"]) for r in prompts]
    targets = [canonical_image(m["truth"], m["unsafe"]) for m in metas]
    pv = processor.image_processor(images=[_pil(t) for t in targets], return_tensors="pt")["pixel_values"]
    images = [np.asarray(im.convert("RGB")) for im in janus_decode_images(model, processor, janus_codes(model, pv))]
    return _scores(prompts, images)


def prepare_t2i_policy(out_dir, seed: int = 0, subtask: str = "t2i", budget: str | dict = "tiny",
                       cache_dir=CACHE) -> tuple[Path, dict]:
    """Build a tiny Janus, fit its VQ tokenizer (cached in `cache_dir`), SFT it on canonical targets; return
    (policy folder, report). The report is also written to the folder as `aa_image_policy.json`.

    `budget`: a name in BUDGETS or a dict of settings replacing some of a budget's (key "name", default "tiny").
    report: {"budget", "untrained" (the tokenizer-fitted model before SFT), "reconstruction" (canonical targets
    through the VQ: the ceiling), "sft", "timing", "code_loss": {"first", "last"}}; the scores are `evaluate`'s
    (greedy decoding) on `mini.heldout_prompts(subtask, n_eval, seed)`.
    """
    import shutil

    from transformers import TrainerCallback

    from aa_lib.train.common import save_trained
    from aa_lib.train.image_output import ImageSFTConfig, build_image_sft_trainer

    if subtask != "t2i":
        raise NotImplementedError(f"prepare_t2i_policy supports subtask 't2i' only, not {subtask!r} (ti2ti needs the "
                                  f"response text too)")
    if isinstance(budget, dict):  # a named budget's settings with some replaced (for measurements)
        bad = set(budget) - set(BUDGETS["tiny"]) - {"name"}
        if bad:
            raise ValueError(f"unknown budget settings {sorted(bad)}; known: {sorted(BUDGETS['tiny'])}")
        b = {**BUDGETS[budget.get("name", "tiny")], **{k: v for k, v in budget.items() if k != "name"}}
    elif budget in BUDGETS:
        b = dict(BUDGETS[budget])
    else:
        raise ValueError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    torch.manual_seed(seed)
    t0 = time.time()
    start = _fit_tokenizer(seed, b, cache_dir)
    t_tok = time.time() - t0
    held = mini.heldout_prompts(subtask, b["n_eval"], seed=seed)
    report = {"budget": b, "untrained": evaluate(start, held, seed), "reconstruction": reconstruction(start, held)}
    rows = sft_rows(subtask, b["n_train"], seed)

    class StopAfter(TrainerCallback):  # a safety cap only: the budgets' step counts finish well inside it
        def on_step_end(self, args, state, control, **kw):
            if time.time() - t1 > b["sft_seconds"]:
                control.should_training_stop = True

    scratch = tempfile.mkdtemp(prefix="aa_image_policy_")
    try:
        config = ImageSFTConfig(output_dir=scratch, max_steps=b["sft_steps"],
                                per_device_train_batch_size=b["batch_size"], learning_rate=b["lr"],
                                lr_scheduler_type="cosine", warmup_steps=min(10, b["sft_steps"] // 10),
                                weight_decay=0.0, seed=seed, disable_tqdm=True,
                                logging_steps=max(1, b["sft_steps"] // 30))
        t1 = time.time()
        trainer = build_image_sft_trainer(config, start, rows)
        trainer.add_callback(StopAfter())
        trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    history = [h["code_loss"] for h in trainer.state.log_history if "code_loss" in h]
    report["timing"] = {"tokenizer_s": t_tok, "tokenizer_steps": json.loads(
        (Path(start) / "aa_image_tokenizer.json").read_text())["steps"], "sft_s": time.time() - t1,
        "sft_steps": trainer.state.global_step}
    report["code_loss"] = {"first": history[0], "last": history[-1]}
    path = save_trained(trainer.model, trainer.processing_class, out_dir, source_path=start)
    report["sft"] = evaluate(path, held, seed)
    write_text_atomic(Path(path) / "aa_image_policy.json", json.dumps(report, indent=1))
    return path, report
