"""LLF synthesis at a real model size: the three generation stages of `aa_lib.llf.self_improve` (y sampled from the
policy, critique c from the feedback model, refinement y* from the policy) on SmolLM2-135M-Instruct (policy and its
own feedback model, Table 3's "w/o feedback model"), batched (LEFT padding, KV cache) against one prompt at a time.

    .venv/bin/python benchmarks/bench_llf_smollm2.py [--prompts 8] [--batch-size 8] [--max-new-tokens 48]
                                                     [--threads 2]

Each stage gets the same inputs both ways (the batched run's y and c), so a stage's responses are compared on their
own; sampling is per row and seeded by the row's key (aa_lib.llf.generation), greedy otherwise. New tokens run up to
and including EOS. Runs under aa_lib's pinned numerics, float32 (AA_NATIVE_NUMERICS=1 for the native kernels).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import aa_lib  # noqa: E402,F401  (before torch: pins the CPU numerics, aa_lib.numerics; AA_NATIVE_NUMERICS=1 opts out)

import torch  # noqa: E402

from aa_lib import data, llf, mini  # noqa: E402
from aa_lib.models import load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realsize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--model", help="a converted SmolLM2 folder (default: convert the GGUF once into .cache/bench)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(realsize.smollm2_folder(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        prompts = data.to_prompts(mini.dataset("t2t", args.prompts, seed=args.seed, root=Path(tmp) / "mini"))
    examples = [dict(prompts[i]) for i in range(len(prompts))][:args.prompts]
    keys = [llf.example_key(ex) for ex in examples]
    sampled = llf.GenerationOptions(max_new_tokens=args.max_new_tokens, do_sample=True)
    greedy = llf.GenerationOptions(max_new_tokens=args.max_new_tokens)
    llf.generate_detailed(model, tok, examples[:2], greedy, batch_size=2)  # warm-up

    def stage(name, inputs, opts, suffix):
        runs = {}
        for how, bs in (("batched", args.batch_size), ("one at a time", 1)):
            t0 = time.perf_counter()
            gens = llf.generate_detailed(model, tok, inputs, opts, bs, args.seed, [k + suffix for k in keys])
            runs[how] = (gens, time.perf_counter() - t0)
        line = []
        for how, (gens, dt) in runs.items():
            n = sum(g.n_tokens for g in gens)
            line.append(f"{how} {len(gens) / dt:.2f} prompts/s, {n / dt:,.1f} new tokens/s ({n} tokens, {dt:.1f} s)")
        (b, tb), (o, to) = runs["batched"], runs["one at a time"]
        same = sum(x.text == y.text for x, y in zip(b, o))
        print(f"{name:>9}: " + "; ".join(line) + f"; batched / one at a time {to / tb:.1f}x (tokens/s "
              f"{sum(g.n_tokens for g in b) / tb / (sum(g.n_tokens for g in o) / to):.1f}x); identical responses "
              f"{same}/{len(b)}")
        return b

    print(f"SmolLM2-135M-Instruct, {len(examples)} T2T prompts, batch {args.batch_size}, max_new_tokens "
          f"{args.max_new_tokens}, {args.threads} threads, {torch.backends.cpu.get_cpu_capability()} kernels")
    ys = stage("y", examples, sampled, ":y")
    crit = [llf.critique_example(ex, y.text) for ex, y in zip(examples, ys)]
    cs = stage("critique", crit, greedy, ":c")
    stage("y*", [llf.refine_example(ex, y.text, c.text) for ex, y, c in zip(examples, ys, cs)], greedy, ":r")


if __name__ == "__main__":
    main()
