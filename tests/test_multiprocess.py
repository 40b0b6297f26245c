"""Scale-out from a cell: a trainer whose config asks for 2 processes runs under `accelerate launch` (multi_gpu.yaml,
gloo on CPU through the config's `use_cpu`, since `accelerate launch --cpu` would start a single process) and
returns the saved folder, as the in-process call does."""
import json
from pathlib import Path

import pytest
import torch

from aa_lib.models import build_tiny, load_model
from aa_lib.presets import make_config
from aa_lib.train.dpo import train_dpo
from aa_lib.train.launch import LaunchError, config_file

CORPUS = ["the red cube is on the left", "a blue ball rolls", "describe the picture", "what color is the cube",
          "the answer is red", "the answer is blue", "a dog barks loudly"] * 3
PAIRS = [("what color is the cube", "the answer is red", "a dog barks loudly"),
         ("describe the picture", "the red cube is on the left", "blue"),
         ("what color is the ball", "the answer is blue", "a red cube"),
         ("describe the sound", "a dog barks loudly", "the cube")] * 2


def msg(role, text):
    return [{"role": role, "content": [{"type": "text", "text": text}]}]


def dpo_config(out, **kw):
    # use_cpu is left False, as in a cell: on a host without CUDA the launch asks accelerate for CPU ranks itself.
    return make_config("dpo", "t2t", out, profile="tiny", max_steps=2, max_length=64, learning_rate=1e-3, seed=0,
                       num_processes=2, **kw)


def test_dpo_two_processes_from_a_cell(tmp_path):
    model = build_tiny("llama", tmp_path / "llama", CORPUS, seed=0)
    data = [{"prompt": msg("user", q), "chosen": msg("assistant", c), "rejected": msg("assistant", r)}
            for q, c, r in PAIRS]
    out = train_dpo(dpo_config(tmp_path / "dpo"), model, data)
    assert out == tmp_path / "dpo"
    ran = json.loads((out / "aa_launch.json").read_text())
    assert ran["num_processes"] == 2 and ran["backend"] == "gloo" and ran["distributed_type"].endswith("MULTI_CPU")
    before, _ = load_model(model)
    after, _ = load_model(out)
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    assert a.keys() == b.keys()
    assert all(not torch.equal(a[n], b[n]) for n in b)  # every parameter moved
    assert not list(tmp_path.glob(".dpo.launch.*"))  # the job folder is cleaned up after a success


def test_failed_child_raises_with_its_error(tmp_path):
    data = [{"prompt": msg("user", "q"), "chosen": msg("assistant", "a"), "rejected": msg("assistant", "b")}]
    missing = tmp_path / "no_such_model"
    with pytest.raises(LaunchError) as err:
        train_dpo(dpo_config(tmp_path / "dpo"), missing, data)
    text = str(err.value)
    assert "train_dpo in 2 processes failed" in text and "-m aa_lib.train.launch" in text
    assert "Traceback" in text and str(missing) in text.splitlines()[-1]  # the rank's own error, naming the path
    assert not (tmp_path / "dpo").exists()


def test_unknown_launch_config_is_named():
    with pytest.raises(FileNotFoundError, match=r"launch_config 'zero2': no file .*zero2.yaml .*'fsdp', "
                                                r"'multi_gpu', 'zero3'"):
        config_file("zero2")


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parent.parent / "accelerate_configs"
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type for p in root.glob("*.yaml")}
    assert {k: str(v).split(".")[-1] for k, v in kinds.items()} == {
        "multi_gpu": "MULTI_GPU", "zero3": "DEEPSPEED", "fsdp": "FSDP"}


def test_zero3_is_refused_before_launch(tmp_path):
    with pytest.raises(NotImplementedError, match="launch_config 'zero3': aa_lib cannot save ZeRO-3-partitioned"):
        train_dpo(dpo_config(tmp_path / "dpo", launch_config="zero3"), tmp_path / "model", [{"prompt": "q"}])
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_fsdp2_shards_are_gathered_for_the_save(tmp_path):
    """FSDP2 (fsdp.yaml) leaves each rank a DTensor shard of every weight; save_trained gathers them. accelerate runs
    FSDP on accelerators only, so here torch's fully_shard runs in a one-rank gloo group in this process."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from aa_lib.train.common import save_trained

    src = build_tiny("llama", tmp_path / "llama", CORPUS, seed=0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, processor = load_model(src)
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = torch.randint(0, 100, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        trained = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
        assert all(isinstance(p, DTensor) for p in model.parameters())
        out = save_trained(model, processor, tmp_path / "out", source_path=src)
    finally:
        dist.destroy_process_group()
    saved = dict(load_model(out)[0].named_parameters())
    before = dict(load_model(src)[0].named_parameters())
    assert all(torch.equal(saved[n], trained[n]) and not torch.equal(saved[n], before[n]) for n in before)
