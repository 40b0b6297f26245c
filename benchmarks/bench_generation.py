"""LLF generation throughput: `aa_lib.llf.generate` (LEFT-padded batches, KV cache) against a loop that generates
one example at a time, on the same align-anything-mini prompts with a tiny model built from config.

    .venv/bin/python benchmarks/bench_generation.py [--family llava] [--prompts 64] [--batch-size 16]
                                                    [--max-new-tokens 32] [--threads 1]

Both runs sample with the same seed (per-row generators), so they produce the same responses; the script checks it.
Tokens are new tokens up to and including EOS (padding after an early EOS is not counted).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aa_lib  # noqa: E402,F401  (before torch: pins the CPU numerics, aa_lib.numerics; AA_NATIVE_NUMERICS=1 opts out)

import torch  # noqa: E402

from aa_lib import data, llf, mini  # noqa: E402
from aa_lib.models import build_tiny, load_model  # noqa: E402

SUBTASK = {"llava": "ti2t", "llama": "t2t", "qwen2": "t2t", "qwen2_vl": "ti2t"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="llava", choices=sorted(SUBTASK))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st = SUBTASK[args.family]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = mini.generate(st, args.prompts, seed=args.seed)
        ds = data.load(mini.write(rows, tmp / "data"), st)
        prompts = data.to_prompts(ds)
        examples = [prompts[i] for i in range(len(prompts))]
        corpus = [v for r in rows for k, v in r.items() if isinstance(v, str) and k != "mini_meta"]
        model, proc = load_model(build_tiny(args.family, tmp / "model", corpus, seed=args.seed))
        # Untrained models rarely emit EOS, so every response runs to max_new_tokens: a fair, fixed workload.
        opts = llf.GenerationOptions(max_new_tokens=args.max_new_tokens, do_sample=True)
        llf.generate_detailed(model, proc, examples[:2], opts, batch_size=2)  # warm-up

        results = {}
        for name, bs in (("batched", args.batch_size), ("one at a time", 1)):
            t0 = time.perf_counter()
            gens = llf.generate_detailed(model, proc, examples, opts, batch_size=bs, seed=args.seed)
            dt = time.perf_counter() - t0
            tokens = sum(g.n_tokens for g in gens)
            results[name] = (gens, tokens / dt)
            print(f"{name:>14}: {len(gens)} prompts, {tokens} new tokens in {dt:.2f} s -> {tokens / dt:,.0f} tokens/s"
                  f" (batch size {bs})")
        same = [g.text for g in results["batched"][0]] == [g.text for g in results["one at a time"][0]]
        print(f"family {args.family} ({st}), threads {args.threads}: batched / one-at-a-time = "
              f"{results['batched'][1] / results['one at a time'][1]:.1f}x; identical responses: {same}")


if __name__ == "__main__":
    main()
