"""Scale-out on CPU: DPO in two processes (`accelerate launch --multi_gpu --num_processes 2`, gloo), as on a
multi-GPU host. `--cpu` would start a single process, so the script asks for CPU through `use_cpu=True` instead."""
import json
import os
import subprocess
import sys
from pathlib import Path

from aa_lib.models import build_tiny

CORPUS = ["the red cube is on the left", "a blue ball rolls", "describe the picture", "what color is the cube",
          "the answer is red", "the answer is blue", "a dog barks loudly"] * 3


def test_dpo_two_processes(tmp_path):
    model = build_tiny("llama", tmp_path / "llama", CORPUS, seed=0)
    out = tmp_path / "out"
    out.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(Path(__file__).with_name("dpo_two_process.py")), str(model), str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(ranks):
        assert r["rank"] == i and r["world_size"] == 2 and r["backend"] == "gloo"
        assert r["steps"] == 2
        assert r["changed"] == r["total"] > 0  # every parameter moved
    # DDP averaged the gradients: both replicas hold the same weights.
    assert ranks[0]["checksum"] == ranks[1]["checksum"]


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parent.parent / "accelerate_configs"
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type for p in root.glob("*.yaml")}
    assert {k: str(v).split(".")[-1] for k, v in kinds.items()} == {
        "multi_gpu": "MULTI_GPU", "zero3": "DEEPSPEED", "fsdp": "FSDP"}
