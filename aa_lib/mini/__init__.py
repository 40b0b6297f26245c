"""align-anything-mini: a procedurally generated world in the exact align-anything schema (SPEC §2).

Prompts for all eight subtasks have checkable answers: shapes in 32x32 images, moving shapes in short videos,
beep sequences at 16 kHz, and text tasks with verifiable constraints. Simulated respondents answer with typical
faults, a rubric scores every dimension and writes critiques and refinements, simulated annotators label pairs
with and without language feedback. Every random thing takes a seed.

    rows = generate("ti2t", 200, seed=0)            # schema columns + mini_meta (JSON hidden truth)
    path = write(rows, "data/mini_ti2t")           # rows file + media files with relative paths
    rubric_score(rows[0], "the circle is red .")   # judge any response to a mini prompt
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from aa_lib.mini.annotators import agreement, annotate, human_ai_agreement, label_study, pairwise_agreement
from aa_lib.mini.build import generate, heldout_prompts, make_split, media_bytes, prompt_types, write
from aa_lib.mini.checker import read_audio, read_image, read_video
from aa_lib.mini.render import render as render_scene
from aa_lib.mini.respondents import RESPONDENTS, Respondent
from aa_lib.mini.rubric import WEIGHTS, judge_pair, rubric_score
from aa_lib.mini import world
from aa_lib.mini.world import PROMPT_TYPES, REFUSAL, WorldConfig, make_config, make_item
from aa_lib.subtasks import SUBTASKS, get_subtask

@functools.lru_cache(maxsize=4)
def _corpus(n: int, seed: int) -> tuple[str, ...]:
    import numpy as np

    out = [REFUSAL, " ".join(str(k) for k in range(21)), " ".join(world.NUMBER_WORDS), "unclear"]
    cfg = WorldConfig()
    for name in SUBTASKS:
        rng = np.random.default_rng([seed, 99])
        for ptype in PROMPT_TYPES[name]:  # every prompt template, many draws (cheap: no rendering)
            for _ in range(60):
                item = make_item(rng, name, cfg, ptype)
                out += [item["prompt"]] + ([item["reference"]] if item["reference"] else [])
        for row in generate(name, n, seed=seed):
            out += [v for k, v in row.items() if isinstance(v, str) and k != "mini_meta" and not v.startswith("mini-")]
    return tuple(dict.fromkeys(out))


def dataset(subtask: str, n: int, seed: int = 0, split: str = "train", root: str | os.PathLike = ".cache/mini",
            fmt: str = "jsonl", **world_options):
    """A mini split on disk, loaded through `aa_lib.data.load` exactly as a user's real data would be.

    Written once under `root/<subtask>-<split>-n<n>-s<seed>[-<options hash>]/` (atomic writes); later calls only load.
    """
    from aa_lib import data

    tag = ""
    if world_options:
        tag = "-" + hashlib.sha256(json.dumps(world_options, sort_keys=True, default=str).encode()).hexdigest()[:8]
    out_dir = Path(root) / f"{get_subtask(subtask).name}-{split}-n{n}-s{seed}{tag}"
    path = out_dir / f"{get_subtask(subtask).name}.{fmt}"
    if not path.exists():
        write(generate(subtask, n, seed=seed, split=split, **world_options), out_dir, fmt=fmt)
    return data.load(path, subtask, media_root=out_dir)


def corpus(n_rows: int = 60, seed: int = 1234) -> list[str]:
    """Text the world produces (prompts, references, responses, rationales, critiques, feedback) for tokenizers."""
    return list(_corpus(n_rows, seed))


def vocabulary(n_rows: int = 60, seed: int = 1234) -> list[str]:
    """The closed word list: whitespace tokens of `corpus()`, lower-cased (the world's text is space-separated)."""
    return sorted({w.lower() for s in _corpus(n_rows, seed) for w in s.split()})


__all__ = [
    "dataset", "generate", "write", "make_split", "heldout_prompts", "media_bytes", "prompt_types", "corpus", "vocabulary",
    "rubric_score", "judge_pair", "annotate", "agreement", "human_ai_agreement", "label_study", "pairwise_agreement",
    "read_image", "read_video", "read_audio", "render_scene", "make_item", "make_config", "WorldConfig",
    "RESPONDENTS", "Respondent", "PROMPT_TYPES", "WEIGHTS",
]
