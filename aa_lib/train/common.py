"""What every aa_lib trainer shares: loading a model folder for training, freezing towers/projectors, LoRA targets,
CPU-friendly defaults, and saving a finished model as a plain Hugging Face folder (atomically).

A trained model is always saved as a full model folder (LoRA adapters merged in), with its processor, so the next
stage (DPO after SFT, PPO after the reward model) loads it with `aa_lib.models.load_model` like any other.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from aa_lib import numerics
from aa_lib.media import write_folder_atomic
from aa_lib.models import family_for_model_type, get_family, load_model, submodules

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class AAOptions:
    """aa_lib's options on top of a TRL config, and TRL/transformers defaults changed for 2-core CPU runs.

    Mixed into each method's config (`SFTConfig`, `DPOConfig`, `RewardConfig`) before the TRL base class, so the
    defaults below win over TRL's (which turn bf16 on, for one).
    """

    family: str | None = field(default=None, metadata={"help": "aa_lib model family; None: from config.model_type."})
    freeze_tower: bool = field(default=False, metadata={"help": "Freeze the vision/audio tower (FAMILIES[f].towers)."})
    freeze_projector: bool = field(default=False, metadata={"help": "Freeze the projector (FAMILIES[f].projectors)."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the language model; 0 trains full weights."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: tuple[str, ...] = field(
        default=LORA_TARGETS, metadata={"help": "Linear layer names of the language model that get LoRA adapters."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames sampled per video (None: all frames)."})
    num_processes: int = field(default=1, metadata={
        "help": "Training processes; > 1 runs the stage under `accelerate launch` (aa_lib.train.launch)."})
    launch_config: str = field(default="multi_gpu", metadata={
        "help": "accelerate config if num_processes > 1: multi_gpu, zero3, fsdp (accelerate_configs/) or a YAML path."})
    # CPU-friendly defaults (the `paper` profile sets bf16 / gradient checkpointing on GPU hosts).
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (off: CPU default)."})
    # transformers 5.24 renamed gradient checkpointing to activation checkpointing; setting only the new name keeps
    # the deprecated alias (which TRL defaults to True) from overriding it with a warning on every config.
    activation_checkpointing: bool | None = field(
        default=False, metadata={"help": "Activation (gradient) checkpointing (off: CPU default)."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (mirrors it)."})
    report_to: str | list[str] = field(default="none", metadata={"help": "Logging integrations (none)."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing (the final model is saved anyway)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every n optimizer steps."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, shuffling and dropout."})
    data_seed: int | None = field(default=0, metadata={"help": "Seed of the data sampler."})

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)  # a TRL / transformers config; ImagePPOConfig has none
        if parent is not None:
            parent()
        # The pinned AVX2 kernels have no bf16 matmul: bf16 autocast on a CPU runs 40-160x slower than float32 there
        # (benchmarks/bench_dpo_smollm2.py); AMX bf16 needs the native kernels.
        on_cpu = getattr(self, "use_cpu", False) or not torch.cuda.is_available()
        if self.bf16 and on_cpu and numerics.in_effect()["pinned"]:
            warnings.warn(f"bf16 on a CPU under aa_lib's pinned AVX2 numerics is much slower than float32: set "
                          f"bf16=False, or {numerics.OPT_OUT}=1 before starting Python for native bf16 kernels")


def freeze(model: torch.nn.Module, family: str, tower: bool = False, projector: bool = False) -> list[str]:
    """Turn off gradients of the family's media tower and/or projector; returns the frozen module names."""
    fam = get_family(family)
    if (tower or projector) and fam.modalities and not (fam.towers or fam.projectors):
        raise ValueError(f"family {family}: its tower and projector modules are unknown to aa_lib, so "
                         f"freeze_tower / freeze_projector cannot apply; freeze them on the model yourself")
    names = (list(fam.towers) if tower else []) + (list(fam.projectors) if projector else [])
    for module in submodules(model, names):
        module.requires_grad_(False)
    return names


def peft_config_for(model, family: str, config: AAOptions):
    """None without LoRA (`config.lora_r` 0), else a PEFT LoraConfig whose targets are the language model's linear
    layers named in `config.lora_target_modules`.

    Target names are given as full module paths: a bare "q_proj" would also hit the vision/audio tower's attention.
    """
    if not config.lora_r:
        return None
    from peft import LoraConfig

    fam = get_family(family)
    targets = tuple(config.lora_target_modules)
    outside = (*fam.towers, *fam.projectors, *fam.generation_modules)  # modules outside the language model
    # A media model outside the table: transformers' multimodal models keep the text model at model.language_model.
    inside = "model.language_model." if fam.modalities and not outside else ""
    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets and n.startswith(inside)
             and not any(n == o or n.startswith(o + ".") for o in outside)]
    if not names:
        raise ValueError(f"family {family}: no linear layer named {list(targets)} in the language model")
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=names, bias="none")


def load_for_training(model_path, config: AAOptions):
    """(model, processor, family) from a model folder, with the config's freezing applied (LoRA comes later)."""
    model, processor = load_model(model_path, family=config.family)
    family = config.family or family_for_model_type(model.config.model_type)
    freeze(model, family, tower=config.freeze_tower, projector=config.freeze_projector)
    return model, processor, family


def load_reference(model_path, family: str) -> torch.nn.Module:
    """A frozen reference model (no gradients, eval mode) from a model folder."""
    return load_model(model_path, family=family)[0].requires_grad_(False).eval()


def is_multimodal(family: str) -> bool:
    return bool(get_family(family).modalities)


def as_dataset(data):
    """A datasets.Dataset from a Dataset or a list of example dicts, with `aa_row` (the row number errors name)."""
    import datasets

    ds = data if isinstance(data, datasets.Dataset) else datasets.Dataset.from_list(list(data))
    if "aa_row" not in ds.column_names:
        ds = ds.add_column("aa_row", list(range(len(ds))))
    return ds


LOG_HISTORY = "log_history.json"


def save_trained(model, processor, out_dir, source_path=None, extra: Callable[[Path], None] | None = None,
                 log_history: list[dict] | None = None) -> Path:
    """Save a trained model (adapters merged) + processor as a loadable folder, atomically; `log_history` (the
    trainer's logged metrics per step) goes beside it as `log_history.json`."""
    from peft import PeftModel

    plain = model.merge_and_unload() if isinstance(model, PeftModel) else model
    if any(hasattr(p, "ds_id") for p in plain.parameters()):  # DeepSpeed tags the parameters it partitions
        raise NotImplementedError("save_trained: ZeRO-3-partitioned weights are not gathered; use fsdp/multi_gpu, "
                                  "or build the trainer and save with trainer.save_model")
    launched = torch.distributed.is_initialized()  # a stage in N processes (aa_lib.train.launch): rank 0 writes
    weights = gathered_weights(plain) if launched else None
    if launched and torch.distributed.get_rank() > 0:
        return Path(out_dir)

    def write(tmp: Path):
        plain.save_pretrained(tmp, state_dict=weights)
        processor.save_pretrained(tmp)
        tok = getattr(processor, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(tmp)  # AutoTokenizer on the folder works too (as in build_tiny)
        spec = Path(str(source_path)) / "aa_tiny_spec.json" if source_path is not None else None
        if spec is not None and spec.exists():
            shutil.copy(spec, tmp / spec.name)  # keeps load_model's float32 default for tiny models
        if extra is not None:
            extra(tmp)
        if log_history is not None:
            (tmp / LOG_HISTORY).write_text(json.dumps(log_history, indent=1))

    return write_folder_atomic(out_dir, write)


def gathered_weights(model) -> dict | None:
    """Under FSDP2 each rank holds a shard of every weight (a DTensor): all ranks gather them in turn, rank 0 keeps
    the full tensors on CPU (one at a time on the device). None when nothing is sharded (DDP: replicas agree)."""
    from torch.distributed.tensor import DTensor

    state = model.state_dict()
    if not any(isinstance(v, DTensor) for v in state.values()):
        return None
    full = {}
    for k, v in state.items():
        v = v.full_tensor() if isinstance(v, DTensor) else v
        if torch.distributed.get_rank() == 0:
            full[k] = v.cpu()
    return full or None
