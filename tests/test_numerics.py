"""CPU numerics that travel (aa_lib.numerics): with the project's pinning, this machine trains the same weights, bit
for bit, as an AVX2-only machine would; without it, an AVX-512 machine does not."""
import json
import os
import subprocess
import sys

import pytest

from aa_lib import numerics

# A tiny Llama trained for 30 AdamW steps: matmuls (MKL), norms and softmax (ATen vector kernels), the optimizer's
# foreach kernels. `import aa_lib` is all the pinning the script does itself.
TRAIN = """
import hashlib, json
import aa_lib
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
for _ in range(30):
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
weights = b"".join(p.detach().numpy().tobytes() for p in model.state_dict().values())
print(json.dumps({"sha": hashlib.sha256(weights).hexdigest(), "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def _train(**env_over) -> dict:
    # The test process itself is pinned (conftest imports aa_lib): start each child from the unpinned environment.
    env = {k: v for k, v in os.environ.items() if k not in (*numerics.PINNED_ENV, numerics.OPT_OUT)}
    env.update(HF_HUB_OFFLINE="1", **env_over)
    proc = subprocess.run([sys.executable, "-c", TRAIN], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _native_capability() -> str:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not numerics.applies_here(), reason="the pinning is for x86-64 CPUs")
def test_pinned_training_is_bit_identical_to_an_avx2_only_machine():
    # MKL_ENABLE_INSTRUCTIONS=AVX2 with the other two variables: how an AVX-512 machine behaves as an AVX2-only one.
    avx2_only = _train(**numerics.PINNED_ENV, MKL_ENABLE_INSTRUCTIONS="AVX2")
    pinned = _train()  # the project's pinning, from `import aa_lib` alone
    assert pinned["capability"] == "AVX2"
    assert pinned["sha"] == avx2_only["sha"]
    if _native_capability().startswith("AVX512"):
        # Negative control: the pinning is what makes them agree (an AVX2-only machine's native run is the pinned one).
        native = _train(**{numerics.OPT_OUT: "1"})
        assert native["capability"].startswith("AVX512")
        assert native["sha"] != avx2_only["sha"]


def test_pinned_env_keeps_user_values_and_respects_the_opt_out():
    env = numerics.pinned_env({"MKL_CBWR": "COMPATIBLE", "PATH": "/bin"})
    if numerics.applies_here():
        assert env["MKL_CBWR"] == "COMPATIBLE" and env["ATEN_CPU_CAPABILITY"] == "avx2"
        assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
        # a run under native numerics is not taken for one under the pinning
        assert numerics.fingerprint_part({}) != numerics.fingerprint_part(numerics.pinned_env({}))
    assert numerics.pinned_env({"AA_NATIVE_NUMERICS": "1"}) == {"AA_NATIVE_NUMERICS": "1"}
    assert not numerics.is_native({"AA_NATIVE_NUMERICS": "0"})


def test_bf16_on_cpu_under_the_pinning_warns(tmp_path):
    # the pinned AVX2 kernels have no bf16 matmul (40-160x slower than float32 here): a config asking for it says so
    from aa_lib.train.dpo import DPOConfig

    if not numerics.in_effect()["pinned"]:
        pytest.skip("the pinning is off in this process (AA_NATIVE_NUMERICS or not x86-64)")
    with pytest.warns(UserWarning, match="bf16 on a CPU under aa_lib's pinned AVX2 numerics is much slower"):
        DPOConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True)
