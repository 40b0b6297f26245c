"""The real-size benchmarks' FLOP counts (benchmarks/realsize.py) against torch's own FLOP counter on a tiny Llama."""
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import realsize  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama():
    # eager attention: its two matmuls are what FlopCounterMode counts (it has no formula for the CPU SDPA kernel,
    # which does the same Q K^T and A V products)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         attn_implementation="eager")
    return config, LlamaForCausalLM(config)


def padded_batch(rows=4, length=11):
    ids = torch.randint(3, 96, (rows, length))
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, 7:] = 0  # right padding, as TRL's preference collator pads
    mask[3, 4:] = 0
    return ids, mask


def test_linear_shapes_cover_every_matmul_weight(tiny_llama):
    config, model = tiny_llama
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert sum(i * o * c for i, o, c in realsize.linear_shapes(config)) == linear


def test_dpo_step_flops_match_torch_flop_counter(tiny_llama):
    config, model = tiny_llama
    ids, mask = padded_batch()
    with FlopCounterMode(display=False) as policy:
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    with FlopCounterMode(display=False) as ref, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    rows, length = ids.shape
    assert ref.get_total_flops() == realsize.forward_flops_per_token(config, length) * rows * length
    assert policy.get_total_flops() == 3 * ref.get_total_flops()
    assert realsize.dpo_step_flops(config, rows, length) == policy.get_total_flops() + ref.get_total_flops()
