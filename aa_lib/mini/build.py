"""Rows in the published align-anything schema, from world items, respondents and the rubric; writing them to disk.

Row i of (subtask, split, seed) draws from its own generator `default_rng([seed, split, subtask, i])`, so rows do not
depend on `n` and the same seed gives identical rows and media bytes. In memory a media value is
{"bytes", "path"} (path relative to the data folder); `write` puts the bytes in files and the path in the row.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aa_lib.media import AUDIO_RATE, encode_mp4, encode_png, encode_wav, write_bytes_atomic, write_text_atomic
from aa_lib.mini import rubric
from aa_lib.mini.render import render
from aa_lib.mini.respondents import (RESPONDENTS, respond_scene, respond_text, respond_ti2ti_text, sample_faults)
from aa_lib.mini.world import PROMPT_TYPES, WorldConfig, make_config, make_item, number_word
from aa_lib.subtasks import SUBTASKS, get_subtask

SPLITS = {"train": 0, "val": 1, "heldout": 2}
SUBTASK_CODES = {name: k for k, name in enumerate(SUBTASKS)}
MEDIA_DIRS = {"image": ("images", ".png"), "audio": ("audios", ".wav"), "video": ("videos", ".mp4")}


def encode_media(kind: str, data: np.ndarray, cfg: WorldConfig) -> bytes:
    """Rendered media as file bytes: PNG, 16 kHz WAV, or mp4 at the world's frame rate."""
    if kind == "image":
        return encode_png(data)
    if kind == "audio":
        return encode_wav(data, AUDIO_RATE)
    return encode_mp4(data, fps=cfg.fps)


def _media(kind: str, data: np.ndarray, name: str, cfg: WorldConfig) -> dict:
    folder, ext = MEDIA_DIRS[kind]
    if kind == "video":  # mp4 encoding is the slowest step: keep frames until `write` (or `media_bytes`)
        return {"frames": data, "fps": cfg.fps, "path": f"{folder}/{name}{ext}"}
    return {"bytes": encode_media(kind, data, cfg), "path": f"{folder}/{name}{ext}"}


def media_bytes(value: dict) -> bytes:
    """The file bytes of an in-memory media value ({"bytes", "path"} or, for video, {"frames", "fps", "path"})."""
    if value.get("bytes") is not None:
        return value["bytes"]
    return encode_mp4(value["frames"], fps=int(value.get("fps", 4)))


def _is_media(value) -> bool:
    return isinstance(value, dict) and "path" in value and ("bytes" in value or "frames" in value)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _meta(item: dict, split: str, seed: int, row_id: str, cfg: WorldConfig, **extra) -> str:
    meta = {"id": row_id, "split": split, "seed": seed, **item, "world": cfg.to_dict(), **extra}
    return json.dumps(_jsonable(meta), sort_keys=True)


def _prompt(st, i: int, seed: int, split: str, cfg: WorldConfig):
    """Row `i`'s generator, id, world item and the row's prompt columns (text and rendered input media)."""
    rng = np.random.default_rng([int(seed), SPLITS[split], SUBTASK_CODES[st.name], int(i)])
    row_id = f"{st.name}-{split}-s{seed}-{i:06d}"
    item = make_item(rng, st.name, cfg)
    row = {st.prompt_column: item["prompt"]}
    if st.media_column:
        kind = item["truth"]["kind"]
        row[st.media_column] = (_media(kind, render(item["truth"], cfg.image_size), row_id, cfg)
                                if kind in MEDIA_DIRS else None)
    return rng, row_id, item, row


def make_row(subtask: str, i: int, seed: int = 0, split: str = "train", cfg: WorldConfig | None = None) -> dict:
    """Row `i` of a split: a prompt, two respondents' responses, rubric scores, rationales, critiques, preference."""
    cfg = cfg or WorldConfig()
    st = get_subtask(subtask)
    rng, row_id, item, row = _prompt(st, i, seed, split, cfg)
    names = [str(x) for x in rng.choice(sorted(RESPONDENTS), size=2, replace=False)]
    faults, assessments = [], []
    for k, name in enumerate(names, start=1):
        f = sample_faults(RESPONDENTS[name], item, rng)
        faults.append(f)
        if st.text_output:
            resp = respond_text(item, f, rng, cfg)
            for _ in range(5):  # a pair of identical answers carries no preference: let the second respondent retry
                if k == 1 or resp != row[st.response_columns[0]]:
                    break
                f = sample_faults(RESPONDENTS[name], item, rng)
                faults[-1] = f
                resp = respond_text(item, f, rng, cfg)
            row[st.response_columns[k - 1]] = resp
            assessments.append(rubric.assess(item, resp, cfg))
        else:
            scene = respond_scene(item, f, rng, cfg)
            data = render(scene, cfg.image_size)
            kind = scene["kind"]
            media = _media(kind, data, f"{row_id}_{k}", cfg)
            if st.name == "ti2ti":
                text = respond_ti2ti_text(item, f, rng)
                row[st.response_columns[k - 1]] = text
                row[st.response_media_columns[k - 1]] = media
                assessments.append(rubric.assess(item, (text, data), cfg))
            else:
                row[st.response_columns[k - 1]] = media
                assessments.append(rubric.assess(item, data, cfg))
    row[st.source_columns[0]], row[st.source_columns[1]] = names
    for dim in st.dimensions:
        s1, s2 = (a.scores[dim.name] for a in assessments)
        r1, r2 = st.rate_columns(dim)
        row[r1], row[r2] = int(s1), int(s2)
        q1, q2 = st.rationale_columns(dim)
        row[q1], row[q2] = (a.rationale(dim.name) for a in assessments)
        row[st.preferred_column(dim)] = rubric.prefer(s1, s2, rng)
    row[st.critique_columns[0]], row[st.critique_columns[1]] = (a.critique for a in assessments)
    o1, o2 = (a.overall for a in assessments)
    win = rubric.prefer(o1, o2, rng)
    bad = assessments[2 - win]
    if bad.all_issues():
        reason = f"response {number_word(win)} is better , the other has this problem : {bad.critique_text}"
    else:
        reason = f"both responses are correct and clear , response {number_word(win)} is chosen by a coin ."
    if st.feedback_column:
        row[st.feedback_column] = f"##Reason: {reason} ##Refinement: {bad.refinement}"
    row[st.overall_column] = win
    if "refine_prompt" in st.extra_columns:
        row["refine_prompt"] = (f"{item['prompt']} keep the beeps clean and steady ." if not item["unsafe"]
                                else "play one soft low beep .")
        row["reasoning"] = reason
    missing = [c for c in st.columns() if c not in row]
    if missing:
        raise RuntimeError(f"mini row {row_id} lacks schema columns {missing}")
    out = {c: row[c] for c in st.columns()}
    out["mini_meta"] = _meta(item, split, seed, row_id, cfg, respondents=names, faults=faults,
                             overall_scores=[o1, o2])
    return out


def generate(subtask: str, n: int, seed: int = 0, split: str = "train", **world_options) -> list[dict]:
    """`n` rows of `subtask` in the published schema plus `mini_meta` (JSON: truth, prompt type, respondents,
    faults, split). Media values are {"bytes", "path"} dicts (video: {"frames", "fps", "path"}, see `media_bytes`)
    until `write` puts them on disk."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = make_config(**world_options)
    name = get_subtask(subtask).name
    return [make_row(name, i, seed, split, cfg) for i in range(n)]


def heldout_prompts(subtask: str, n: int, seed: int = 0, **world_options) -> list[dict]:
    """Prompts (with their media and mini_meta truth, no responses) for evaluating generated responses."""
    cfg = make_config(**world_options)
    st = get_subtask(subtask)
    out = []
    for i in range(n):
        _, row_id, item, row = _prompt(st, i, seed, "heldout", cfg)
        row["mini_meta"] = _meta(item, "heldout", seed, row_id, cfg)
        out.append(row)
    return out


def make_split(subtask: str, n_train: int, n_val: int, n_heldout_prompts: int, seed: int = 0,
               **world_options) -> dict[str, list[dict]]:
    """{"train": rows, "val": rows, "heldout": prompts}: three independent random streams of the same world."""
    return {"train": generate(subtask, n_train, seed, "train", **world_options),
            "val": generate(subtask, n_val, seed, "val", **world_options),
            "heldout": heldout_prompts(subtask, n_heldout_prompts, seed, **world_options)}


def _subtask_of(rows: list[dict]) -> str:
    for r in rows:
        if "mini_meta" in r:
            return json.loads(r["mini_meta"])["subtask"]
    raise ValueError("rows carry no mini_meta; pass subtask= to write()")


def write(rows_or_subtask, out_dir, fmt: str = "jsonl", n: int | None = None, seed: int = 0, name: str | None = None,
          subtask: str | None = None, **world_options) -> Path:
    """Write rows (or `generate(subtask, n, seed, ...)`) to `out_dir/<name>.<fmt>` plus media files under `out_dir`.

    Media columns then hold paths relative to `out_dir` (the loader's media root): images `images/x.png`
    (in parquet an HF Image struct {"bytes", "path"}), audio `audios/x.wav`, video `./videos/x.mp4`.
    Every file is written atomically. Returns the rows file.
    """
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be 'jsonl' or 'parquet', got {fmt!r}")
    if isinstance(rows_or_subtask, str):
        if n is None:
            raise ValueError("write(subtask, ...) needs n= rows to generate")
        subtask = get_subtask(rows_or_subtask).name
        rows = generate(subtask, n, seed, **world_options)
    else:
        rows = list(rows_or_subtask)
        subtask = subtask or _subtask_of(rows)
    out_dir = Path(out_dir)
    written = []
    for idx, row in enumerate(rows):
        new = {}
        for col, value in row.items():
            if _is_media(value):
                rel = value["path"]
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise ValueError(f"row {idx}, column {col!r}: media path {rel!r} must be relative, inside out_dir")
                data = media_bytes(value)
                write_bytes_atomic(out_dir / rel, data)
                if rel.endswith(".png"):
                    new[col] = {"bytes": data, "path": rel} if fmt == "parquet" else rel
                else:
                    new[col] = f"./{rel}" if rel.endswith(".mp4") else rel
            else:
                new[col] = value
        written.append(new)
    path = out_dir / f"{name or subtask}.{fmt}"
    if fmt == "jsonl":
        write_text_atomic(path, "".join(json.dumps(_jsonable(r)) + "\n" for r in written))
    else:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([_jsonable(r) for r in written]), buf)
        write_bytes_atomic(path, buf.getvalue())
    return path


def prompt_types(subtask: str | None = None):
    """Prompt types per subtask (all subtasks when None)."""
    return dict(PROMPT_TYPES) if subtask is None else PROMPT_TYPES[get_subtask(subtask).name]
