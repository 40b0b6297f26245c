"""Collating the same rows for several epochs with the collators' encoding memo on and off (`cache_size`), in one run;
and with `aa_lib.media`'s decoded-video cache on and off when every epoch gets a fresh collator.

    .venv/bin/python benchmarks/collator_cache.py [--rows 16] [--epochs 3] [--batch-size 4] [--threads 1]

Two cases, each on a tiny model and align-anything-mini rows read through `datasets` as a trainer's loader reads
them (a fresh dict per row and epoch): TV2T preference pairs through `PairCollator` (qwen2_vl, the DPO collator:
each prompt is encoded for the chosen and the rejected row, the mp4 decoded by PyAV), and T2I SFT rows through
`ImageOutputCollator` (janus: the prompt and the target image each go through the processor). "Off" turns the video
cache off too, so every mp4 is decoded. A third case gives each TV2T epoch its own collator (memo on), as each
generation, training and scoring call of an experiment builds its own, with the video cache off and on (`media.
VIDEO_CACHE_BYTES`). The timed part is the collator calls only; every setting must give identical batches, which
is checked.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import aa_lib  # noqa: E402,F401  (before torch: pins the CPU numerics, aa_lib.numerics; AA_NATIVE_NUMERICS=1 opts out)

import torch  # noqa: E402

from aa_lib import data, media, mini  # noqa: E402
from aa_lib.collators import PairCollator  # noqa: E402
from aa_lib.models import build_tiny, load_model  # noqa: E402
from aa_lib.train.image_output import ImageOutputCollator  # noqa: E402


def _flatten(batch: dict) -> dict:
    """{"chosen": {...}} pair batches and plain batches alike, as one flat dict of tensors."""
    return {f"{k}.{j}" if isinstance(v, dict) else k: w for k, v in batch.items()
            for j, w in (v.items() if isinstance(v, dict) else [(None, v)])}


def collate_epochs(collate, ds, epochs: int, batch_size: int) -> tuple[float, list[dict]]:
    """Seconds spent in `collate` over `epochs` passes of `ds` in fixed batches, and the batches."""
    seconds, batches = 0.0, []
    for _ in range(epochs):
        for start in range(0, len(ds), batch_size):
            rows = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            t0 = time.perf_counter()
            batches.append(_flatten(collate(rows)))
            seconds += time.perf_counter() - t0
    return seconds, batches


def assert_same(label: str, batches: list[dict], want: list[dict]) -> None:
    for a, b in zip(batches, want, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{label}: batches differ"


def with_video_cache(nbytes: int, fn):
    """fn() with `media.VIDEO_CACHE_BYTES` set to `nbytes` (0: off)."""
    kept = media.VIDEO_CACHE_BYTES
    media.VIDEO_CACHE_BYTES = nbytes
    try:
        return fn()
    finally:
        media.VIDEO_CACHE_BYTES = kept


def run_case(label: str, ds, make_collator, epochs: int, batch_size: int) -> list[dict]:
    with_video_cache(0, lambda: make_collator(2048)([ds[0]]))  # warm-up: first processor calls, lazy imports
    t_off, off = with_video_cache(0, lambda: collate_epochs(make_collator(0), ds, epochs, batch_size))
    t_on, on = collate_epochs(make_collator(2048), ds, epochs, batch_size)
    assert_same(label, on, off)
    print(f"{label}: {len(ds)} rows x {epochs} epochs, batch {batch_size}: cache off {t_off:6.2f} s, "
          f"on {t_on:6.2f} s, off/on {t_off / t_on:.2f}x")
    return off


def run_fresh_collators(label: str, ds, make_collator, epochs: int, batch_size: int, want: list[dict]) -> None:
    """Each epoch through a new collator (memo on), the video cache off then on; the cache starts empty."""
    def epochs_apart():
        seconds, batches = 0.0, []
        for _ in range(epochs):
            t, b = collate_epochs(make_collator(2048), ds, 1, batch_size)
            seconds, batches = seconds + t, batches + b
        return seconds, batches

    t_off, off = with_video_cache(0, epochs_apart)  # at 0 the first decode also empties the cache
    t_on, on = epochs_apart()
    assert_same(label, off, want)
    assert_same(label, on, want)
    print(f"{label}, a fresh collator per epoch: video cache off {t_off:6.2f} s, on {t_on:6.2f} s, "
          f"off/on {t_off / t_on:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tv2t = data.to_preference(mini.dataset("tv2t", args.rows, root=tmp / "mini"))
        t2i = data.to_sft(mini.dataset("t2i", args.rows, root=tmp / "mini"))
        corpus = [t for ds in (tv2t, t2i) for r in ds for m in r["prompt"] + r.get("chosen", r.get("completion"))
                  for t in [p.get("text") for p in m["content"]] if t]
        _, qwen = load_model(build_tiny("qwen2_vl", tmp / "qwen2_vl", corpus, seed=0))
        _, janus = load_model(build_tiny("janus", tmp / "janus", corpus, seed=0))

        def pair_collator(cache_size):
            return PairCollator(qwen, "qwen2_vl", max_length=256, cache_size=cache_size)

        def image_collator(cache_size):
            coll = ImageOutputCollator(janus, "janus")
            coll.inner.cache_size = cache_size
            return coll

        want = run_case("tv2t PairCollator (qwen2_vl)", tv2t, pair_collator, args.epochs, args.batch_size)
        run_fresh_collators("tv2t PairCollator (qwen2_vl)", tv2t, pair_collator, args.epochs, args.batch_size, want)
        run_case("t2i ImageOutputCollator (janus)", t2i, image_collator, args.epochs, args.batch_size)


if __name__ == "__main__":
    main()
