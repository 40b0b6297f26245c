"""A training stage in N processes from a notebook cell: `accelerate launch` in a subprocess, one entry point.

A trainer marked `@launchable` whose config has `num_processes > 1` saves its inputs to a job folder beside
`output_dir` (datasets with `save_to_disk`, the config's fields and the other arguments as JSON), runs
`accelerate launch --config_file <launch_config> --num_processes N -m aa_lib.train.launch JOB` with the pinned CPU
numerics, waits, and returns the saved folder as the in-process call does; every rank runs the same trainer
function, rank 0 writes the model (`save_trained`, which gathers FSDP2 shards) and `aa_launch.json` (what ran).
A failed child raises `LaunchError` with the command and a rank's traceback; its job folder and log are kept.
DeepSpeed ZeRO-3 is refused: saving its partitioned weights is not implemented.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

import aa_lib
from aa_lib import numerics

CONFIGS = Path(aa_lib.__file__).resolve().parents[1] / "accelerate_configs"


class LaunchError(RuntimeError):
    """A launched training stage exited with an error (the message carries the command and the child's output)."""


def launchable(fn):
    """Run `fn(config, ...)` under `accelerate launch` when `config.num_processes > 1` (and not already a rank)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = inspect.signature(fn).bind(*args, **kwargs)
        config = next(iter(bound.arguments.values()))
        if config.num_processes <= 1 or "LOCAL_RANK" in os.environ:  # LOCAL_RANK: this process is a launched rank
            return fn(*args, **kwargs)
        return launch(fn, config, {k: v for k, v in bound.arguments.items() if v is not config})

    return wrapper


def config_file(name: str) -> Path:
    """An accelerate config: a name in accelerate_configs/ (multi_gpu, zero3, fsdp) or a YAML file's path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(f"launch_config {name!r}: no file {path} (the names in {CONFIGS} are {known})")
    return path


def launch(fn, config, arguments: dict) -> Path:
    import datasets
    import torch

    conf = config_file(config.launch_config)
    if yaml.safe_load(conf.read_text()).get("distributed_type") == "DEEPSPEED":  # before any GPU time is spent
        raise NotImplementedError(f"launch_config {config.launch_config!r}: aa_lib cannot save ZeRO-3-partitioned "
                                  f"weights yet (save_trained gathers FSDP2 shards only); use fsdp or multi_gpu")
    out = Path(config.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix=f".{out.name}.launch.", dir=out.parent))
    args = {}
    for name, value in arguments.items():
        if isinstance(value, datasets.Dataset) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            ds = value if isinstance(value, datasets.Dataset) else datasets.Dataset.from_list(value)
            ds.save_to_disk(str(job / name))
            args[name] = {"dataset": str(job / name)}
        elif value is None or isinstance(value, (str, int, float, bool, os.PathLike)):
            args[name] = {"value": str(value) if isinstance(value, os.PathLike) else value}
        else:
            raise TypeError(f"{fn.__name__}: argument {name} ({type(value).__name__}) cannot go to a launched "
                            f"process; pass a folder path or a dataset (or set num_processes=1)")
    fields = config.to_dict()
    fields.update({k: getattr(config, k) for k in fields if k.endswith("_token")})  # to_dict masks eos/pad tokens
    fields.pop("hub_token", None)
    # accelerate joins CPU ranks (gloo) only when asked to; unasked, each rank would train a copy of its own.
    fields["use_cpu"] = config.use_cpu or not torch.cuda.is_available()
    (job / "job.json").write_text(json.dumps({
        "function": [fn.__module__, fn.__name__], "config": [type(config).__module__, type(config).__name__],
        "fields": fields, "arguments": args}))
    with socket.socket() as s:  # a free port for the ranks' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(conf),
           "--num_processes", str(config.num_processes), "--main_process_port", str(port),
           "--mixed_precision", "bf16" if config.bf16 else "no", "-m", "aa_lib.train.launch", str(job)]
    # The ranks import the aa_lib this cell runs (a checkout on sys.path, not necessarily the installed one).
    root = str(Path(aa_lib.__file__).resolve().parents[1])
    env = numerics.pinned_env({**os.environ, "TOKENIZERS_PARALLELISM": "false",
                               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))})
    log = job / "launch.log"
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0:  # a rank's own traceback if one was caught (torchrun's summary hides it), else the log's tail
        caught = sorted(job.glob("error_rank*.txt"))
        raise LaunchError(f"{fn.__name__} in {config.num_processes} processes failed (exit {rc}); command: "
                          f"{shlex.join(cmd)}\nlog: {log}\n...{(caught[0] if caught else log).read_text()[-6000:]}")
    result = Path(json.loads((job / "result.json").read_text())["output"])
    shutil.rmtree(job, ignore_errors=True)
    return result


def run_job(job: Path) -> None:
    """One rank of a launched stage: rebuild the config and arguments, call the trainer function in-process."""
    import datasets
    from accelerate import PartialState

    spec = json.loads((job / "job.json").read_text())
    fn, cls = (getattr(importlib.import_module(m), name) for m, name in (spec["function"], spec["config"]))
    config = cls(**spec["fields"])
    args = {k: datasets.load_from_disk(v["dataset"]) if "dataset" in v else v["value"]
            for k, v in spec["arguments"].items()}
    try:
        out = Path(fn.__wrapped__(config, **args))
    except BaseException:
        (job / f"error_rank{os.environ.get('RANK', '0')}.txt").write_text(traceback.format_exc())
        raise
    state = PartialState()  # the trainer's, already set up
    if state.num_processes != config.num_processes:
        raise RuntimeError(f"asked for {config.num_processes} processes, trained in {state.num_processes}")
    if state.is_main_process:
        (out / "aa_launch.json").write_text(json.dumps({
            "num_processes": state.num_processes, "backend": str(state.backend),
            "distributed_type": str(state.distributed_type), "launch_config": config.launch_config}))
        (job / "result.json").write_text(json.dumps({"output": str(out)}))


if __name__ == "__main__":
    run_job(Path(sys.argv[1]))
