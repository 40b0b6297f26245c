"""DPO training throughput and peak memory: aa_lib's path (`aa_lib.train.dpo`, PairCollator) against TRL's own
DPOTrainer with its defaults, on the same tiny LLaVA model and align-anything-mini TI2T preference pairs.

    .venv/bin/python benchmarks/bench_dpo.py [--pairs 32] [--steps 8] [--batch-size 2] [--threads 1]

Each trainer runs in its own subprocess (so peak RSS, from getrusage, is its own: imports, models, data and
training). Throughput = non-padding tokens the collator fed to the model (chosen + rejected rows) per second of
`trainer.train()`, after one warm-up step. Both use the same precision (float32: TRL's own default is bf16
autocast, which under aa_lib's pinned AVX2 numerics has no fast kernel), learning rate, batch size, max_length and
CPU; everything else is each side's default (TRL's includes gradient checkpointing). Real-size runs:
bench_dpo_smollm2.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import aa_lib  # noqa: E402,F401  (before torch: pins the CPU numerics, aa_lib.numerics; AA_NATIVE_NUMERICS=1 opts out)


def _count_tokens(trainer) -> list:
    counter = [0]
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        counter[0] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting
    return counter


def worker(which: str, model_path: str, data_path: str, steps: int, batch_size: int, threads: int) -> dict:
    import datasets
    import torch

    torch.set_num_threads(threads)
    ds = datasets.load_from_disk(data_path)
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, max_steps=steps + 1,
                  learning_rate=1e-4, max_length=256, use_cpu=True, report_to="none", save_strategy="no",
                  logging_steps=1000, seed=0, bf16=False)
    if which == "aa_lib":
        from aa_lib.train.dpo import DPOConfig, build_dpo_trainer

        trainer = build_dpo_trainer(DPOConfig(**common), model_path, ds)
    else:
        import trl
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
        ref = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
        trainer = trl.DPOTrainer(model=model, ref_model=ref, args=trl.DPOConfig(**common), train_dataset=ds,
                                 processing_class=AutoProcessor.from_pretrained(model_path))
    counter = _count_tokens(trainer)
    # one warm-up step is excluded from the timing: time from the end of step 1 to the end of training
    marks = {}

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                marks["t0"], marks["tok0"] = time.perf_counter(), counter[0]

    trainer.add_callback(Clock())
    trainer.train()
    dt = time.perf_counter() - marks["t0"]
    tokens = counter[0] - marks["tok0"]
    return {"which": which, "steps": steps, "bf16": bool(trainer.args.bf16), "tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["aa_lib", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.model, args.data, args.steps, args.batch_size,
                                            args.threads)))
        return

    from aa_lib import data, mini
    from aa_lib.models import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = mini.generate("ti2t", args.pairs, seed=args.seed)
        pairs = data.to_preference(data.load(mini.write(rows, tmp / "data"), "ti2t"))
        keep = [c for c in ("prompt", "chosen", "rejected", "images") if c in pairs.column_names]
        pairs.select_columns(keep).save_to_disk(str(tmp / "pairs"))
        corpus = [v for r in rows for k, v in r.items() if isinstance(v, str) and k != "mini_meta"]
        model = build_tiny("llava", tmp / "model", corpus, seed=args.seed)
        results = {}
        for which in ("aa_lib", "trl"):
            cmd = [sys.executable, __file__, "--worker", which, "--model", str(model), "--data", str(tmp / "pairs"),
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise RuntimeError(f"{which} run failed:\n{proc.stderr[-3000:]}")
            r = results[which] = json.loads(line[-1][len("RESULT "):])
            print(f"{which:>7}: {r['tokens']} tokens in {r['seconds']:.2f} s over {r['steps']} steps -> "
                  f"{r['tokens_per_s']:,.0f} tokens/s; peak RSS {r['peak_rss_mb']:,.0f} MB (bf16={r['bf16']})")
        a, t = results["aa_lib"], results["trl"]
        print(f"aa_lib / TRL: throughput {a['tokens_per_s'] / t['tokens_per_s']:.2f}x, "
              f"peak RSS {a['peak_rss_mb'] / t['peak_rss_mb']:.2f}x (tiny LLaVA, {args.pairs} TI2T pairs, "
              f"batch {args.batch_size}, threads {args.threads})")


if __name__ == "__main__":
    main()
