"""Time `aa_lib.data.load` (read + validate + decode each distinct image once) against plain
`datasets.load_dataset("json")` on one ti2t-schema JSONL file.

    .venv/bin/python benchmarks/bench_load.py [--rows 50000] [--images 300] [--num-proc 2]

The file holds every ti2t column (texts, 0-3 scores, preferred ids, critiques) and relative paths to a few hundred
distinct 32x32 PNGs, reused across rows as in the real data's shared images.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aa_lib  # noqa: E402,F401  (before torch: pins the CPU numerics, aa_lib.numerics; AA_NATIVE_NUMERICS=1 opts out)

import datasets  # noqa: E402
import numpy as np  # noqa: E402

from aa_lib import data  # noqa: E402
from aa_lib.media import encode_png, write_bytes_atomic  # noqa: E402
from aa_lib.subtasks import get_subtask  # noqa: E402


def write_corpus(root: Path, rows: int, images: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    st = get_subtask("ti2t")
    for k in range(images):
        img = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        write_bytes_atomic(root / f"images/{k:04d}.png", encode_png(img))
    words = "the a red blue circle square image shows left right of three two count color answer".split()

    pool = {n: [" ".join(rng.choice(words) for _ in range(n)) for _ in range(997)] for n in (12, 15, 20, 40)}

    def text(n):  # drawn from a pool: writing the file should not dominate the benchmark
        return rng.choice(pool[n])

    path = root / "ti2t.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            row = {st.prompt_column: f"Question {i}: {text(12)}?",
                   st.media_column: f"images/{rng.randrange(images):04d}.png",
                   "response_1": text(40), "response_2": text(40), "res_1_from": "model-a", "res_2_from": "model-b"}
            for dim in st.dimensions:
                r1, r2 = st.rate_columns(dim)
                row[r1], row[r2] = rng.randrange(4), rng.randrange(4)
                for c in st.rationale_columns(dim):
                    row[c] = text(15)
                row[st.preferred_column(dim)] = rng.choice((1, 2))
            for c in st.critique_columns:
                row[c] = f"##Critique: {text(20)} ##Refinement: {text(15)}"
            row[st.feedback_column] = f"##Reason: {text(20)} ##Refinement: {text(15)}"
            row[st.overall_column] = rng.choice((1, 2))
            f.write(json.dumps(row) + "\n")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--num-proc", type=int, default=None, help="threads that decode media (default: up to 4)")
    args = ap.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        path = write_corpus(tmp, args.rows, args.images)
        print(f"wrote {args.rows} rows, {args.images} images ({path.stat().st_size / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        plain = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp / "hf_cache"))
        t_plain = time.perf_counter() - t0

        t0 = time.perf_counter()
        ds = data.load(path, "ti2t", num_proc=args.num_proc)
        t_aa = time.perf_counter() - t0
        assert len(ds) == len(plain) == args.rows

        t0 = time.perf_counter()
        pref = data.to_preference(ds)
        t_pref = time.perf_counter() - t0

    print(f"datasets.load_dataset('json'): {t_plain:7.2f} s  {args.rows / t_plain:10,.0f} rows/s")
    print(f"aa_lib.data.load (+validate):  {t_aa:7.2f} s  {args.rows / t_aa:10,.0f} rows/s")
    print(f"ratio aa_lib / datasets time:  {t_aa / t_plain:.2f}x")
    print(f"to_preference ({len(pref)} pairs):  {t_pref:7.2f} s  {args.rows / t_pref:10,.0f} rows/s")


if __name__ == "__main__":
    main()
