"""Loading align-anything preference data, validating every row, and converting it to what TRL trainers take.

`load(source, subtask)` reads a JSON file (a list of objects, or JSON lines), a JSONL file, a Parquet file, a folder
written by `Dataset.save_to_disk` (or a folder of such data files, e.g. a hub snapshot), an in-memory
`datasets.Dataset` / `DatasetDict`, or a list of dicts, in one of three formats (detected from the columns, or forced
with `fmt=`):
- "align_anything": the align-anything-200k schema of `aa_lib.subtasks` (SPEC §2);
- "safe_rlhf": PKU-SafeRLHF rows. `prompt` -> the prompt column, `response_0`/`response_1` -> `response_1`/`response_2`,
  `better_response_id` (0/1) + 1 -> the overall preference, `safer_response_id` + 1 -> the safety dimension's preferred
  column (`s_response`), `response_{0,1}_source` -> the source columns; other columns (`is_response_0_safe`, harm
  categories, ...) pass through. Scores, rationales and critiques stay None (SafeRLHF has none);
- "trl": TRL preference rows (`prompt`, `chosen`, `rejected`, standard or conversational, optional `images`; aa_lib also
  reads `audios`/`videos`). chosen -> `response_1`, rejected -> `response_2`, overall preference 1; the prompt is the
  text of the last user turn, a response the text of the last assistant turn (single-turn data). Dimension columns stay
  None. Both foreign formats need a text-output subtask.

The normalized Dataset holds every column of `subtask.columns()` (absent optional ones all None) followed by the
source's other columns, passed through unchanged (e.g. align-anything-mini's `mini_meta`). Text is string, scores and
preferred ids int64. Media are references {"bytes", "path"} (the storage datasets uses for images): embedded bytes
stay bytes (audio given as {"array", "sampling_rate"} becomes WAV bytes), file paths become absolute, so the Dataset
stays Arrow-friendly at 200k rows and survives `save_to_disk` (which embeds image files). Image columns carry
`datasets.Image()` so `ds[i]["image"]` is a PIL image as TRL expects; audio and video columns are plain structs
(datasets' Audio/Video features decode through torchcodec, which aa_lib avoids): decode any medium with
`decode_media(row, column)`. Video is always a file (mp4 or a folder of frames); in-memory video is refused.
Relative paths resolve under `media_root` (default: the source's folder; the working directory for in-memory
sources) and may not escape it; absolute paths are taken as they are (a normalized Dataset saved and re-loaded elsewhere
keeps working). The subtask is recorded in `ds.info.config_name`, which the conversions read.

Validation: every bad row raises `DataError` (row index in the source, column, reason). With `on_error="skip"` bad rows
are dropped instead: a `DataWarning` gives the count and reasons, and the returned Dataset carries the full `Report`
as `ds.aa_report` (a plain attribute: it does not survive later `map`/`select`). Schema-level problems (a missing
required column, an unreadable file) always raise, with `row=None`. Media are checked at load time by decoding them
(`check_media="decode"`: images and audio fully, video opened and one frame decoded; "exists": paths only; "off"),
each distinct file or byte string once, on `num_proc` threads.

Conversions (`to_preference`, `to_reward_pairs`, `to_sft`, `to_feedback_sft`, `to_prompts`) return new Datasets in
TRL's conversational formats; each carries a `Report` of the rows it dropped as `.aa_report`. Message content is a
list of typed parts ({"type": "image"|"audio"|"video"} placeholders, {"type": "text", "text": ...}) when the subtask
has any media, and a plain string for text-to-text (the form every chat template reads). Media travel beside the
messages: pair formats put the prompt's media in `images`/`audios`/`videos` and the responses' media in
`chosen_images`/`rejected_images` (or `_audios`/`_videos`); single-conversation formats (`to_sft`,
`to_feedback_sft`) list all of the conversation's media in order of their placeholders in `images`/`audios`/`videos`,
as TRL fills placeholders. `audios`/`videos` are aa_lib's extension (TRL has only images).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import uuid
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from aa_lib.media import AUDIO_RATE, FRAME_SUFFIXES, MediaError, encode_png, encode_wav, load_audio, load_image, \
    load_video, resolve_path
from aa_lib.subtasks import Subtask, get_subtask

FORMATS = ("align_anything", "safe_rlhf", "trl")
MEDIA_TYPE = pa.struct({"bytes": pa.binary(), "path": pa.string()})
MEDIA_FEATURE = {"bytes": Value("binary"), "path": Value("string")}
CRITIQUE_REQUEST = "Please provide a critique of the response."
CRITIQUE_REQUEST_AUDIO = "Please provide the ##Critique and ##Refinement."  # SPEC §3: the audio variant


class DataError(ValueError):
    """A bad row (or, with `row=None`, a bad source): names the row index, the column and the reason."""

    def __init__(self, reason: str, *, row: int | None = None, column: str | None = None, source: str | None = None):
        self.reason, self.row, self.column, self.source = reason, row, column, source
        where = [f"row {row}" if row is not None else None, f"column {column!r}" if column else None]
        prefix = ", ".join(w for w in where if w)
        super().__init__(f"{source + ': ' if source else ''}{prefix + ': ' if prefix else ''}{reason}")


class DataWarning(UserWarning):
    """Rows were dropped (`on_error="skip"`)."""


@dataclass
class Report:
    """What a load or a conversion dropped: `dropped` holds (row, column, reason), row being the input row index."""

    stage: str
    rows_in: int
    rows_out: int
    dropped: list[tuple[int | None, str | None, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Dropped rows per "column: kind of reason"."""
        return dict(Counter(f"{col}: {reason.split(':')[0]}" for _, col, reason in self.dropped))

    def __str__(self) -> str:
        counts = "; ".join(f"{n} x {k}" for k, n in self.counts().items())
        return f"{self.stage}: {self.rows_in} rows in, {self.rows_out} out" + (f"; dropped {counts}" if counts else "")


# ======================================================================================= reading sources
@dataclass
class _Raw:
    columns: dict[str, Any]  # name -> pa.ChunkedArray / pa.Array, or a Python list
    n: int
    label: str  # names the source in errors
    root: Path | None  # default media root


def _pylist(col) -> list:
    return col.to_pylist() if _is_arrow(col) else list(col)


def _from_table(table: pa.Table, label: str, root) -> _Raw:
    return _Raw({name: table.column(name) for name in table.column_names}, table.num_rows, label, root)


def _from_records(records: list, label: str, root) -> _Raw:
    names: dict[str, None] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"a row must be an object, got {type(rec).__name__}", row=i, source=label)
        names.update(dict.fromkeys(rec))
    return _Raw({k: [rec.get(k) for rec in records] for k in names}, len(records), label, root)


def _read_jsonl(path: Path, st: Subtask, column_map: dict | None, label: str) -> _Raw:
    import pyarrow.json as pj

    with open(path, "rb") as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        first_keys = set(json.loads(first)) if first else set()
    except (ValueError, TypeError):
        first_keys = set()
    # Text columns are read as strings (stops pyarrow turning a date-like prompt into a timestamp).
    inverse = {v: k for k, v in (column_map or {}).items()}
    text = [inverse.get(c, c) for c, (kind, _) in _column_specs(st).items() if kind in ("prompt", "text")]
    schema = pa.schema([(c, pa.string()) for c in text if c in first_keys])
    try:
        table = pj.read_json(path, read_options=pj.ReadOptions(block_size=1 << 22),
                             parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer"))
        return _from_table(table, label, path.parent)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # mixed types or a broken line: parse in Python, so the checks can name the row
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise DataError(f"invalid JSON: {e}", row=len(records), source=label) from None
    return _from_records(records, label, path.parent)


def _read_file(path: Path, st: Subtask, column_map) -> _Raw:
    label = str(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot read Parquet: {e}", source=label) from None
        return _from_table(table, label, path.parent)
    if suffix == ".jsonl":
        return _read_jsonl(path, st, column_map, label)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            if "Extra data" in str(e):  # JSON lines in a .json file, as datasets also accepts
                return _read_jsonl(path, st, column_map, label)
            raise DataError(f"invalid JSON: {e}", source=label) from None
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            lengths = {len(v) for v in data.values()}
            if len(lengths) != 1:
                raise DataError("a JSON object of columns needs equal-length lists", source=label)
            return _Raw(data, lengths.pop(), label, path.parent)
        if not isinstance(data, list):
            raise DataError(f"a JSON file must hold a list of objects, got {type(data).__name__}", source=label)
        return _from_records(data, label, path.parent)
    raise DataError(f"unsupported file type {suffix!r} (use .json, .jsonl, .parquet or a save_to_disk folder)",
                    source=label)


def _merge(parts: list[_Raw], label: str, root) -> _Raw:
    names: dict[str, None] = {}
    for p in parts:
        names.update(dict.fromkeys(p.columns))
    cols = {}
    for name in names:
        chunks = [p.columns.get(name) for p in parts]
        arrow = [c for c in chunks if isinstance(c, (pa.Array, pa.ChunkedArray))]
        if len(arrow) == len(chunks) and len({c.type for c in arrow}) == 1:
            cols[name] = pa.chunked_array([ch for c in arrow for ch in getattr(c, "chunks", [c])], arrow[0].type)
        else:
            cols[name] = [v for c, p in zip(chunks, parts) for v in (_pylist(c) if c is not None else [None] * p.n)]
    return _Raw(cols, sum(p.n for p in parts), label, root)


def _pick_split(dd: datasets.DatasetDict, split: str | None, label: str) -> datasets.Dataset:
    if split is None:
        if len(dd) != 1:
            raise DataError(f"the source holds splits {sorted(dd)}: pass split=", source=label)
        split = next(iter(dd))
    if split not in dd:
        raise DataError(f"no split {split!r} (splits: {sorted(dd)})", source=label)
    return dd[split]


def _read(source, split: str | None, st: Subtask, column_map) -> _Raw:
    if isinstance(source, datasets.DatasetDict):
        source = _pick_split(source, split, "<in-memory DatasetDict>")
    if isinstance(source, datasets.Dataset):
        return _from_table(source.with_format("arrow")[:], "<in-memory Dataset>", None)
    if isinstance(source, (list, tuple)):
        return _from_records(list(source), "<in-memory rows>", None)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {str(path)!r}")
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = _pick_split(ds, split, str(path))
            return _from_table(ds.with_format("arrow")[:], str(path), path)
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in (".parquet", ".jsonl", ".json")
                       and not f.name.startswith(".") and f.name != "dataset_info.json")
        if split is not None:
            files = [f for f in files if f.name.startswith(split) or f.parent.name == split]
        if not files:
            raise DataError(f"no .parquet/.jsonl/.json data files{f' for split {split!r}' if split else ''}",
                            source=str(path))
        return _merge([_read_file(f, st, column_map) for f in files], str(path), path)
    if split is not None:
        raise ValueError(f"split={split!r} applies to DatasetDicts and folders, not to the single file {str(path)!r}")
    return _read_file(path, st, column_map)


# ======================================================================================= validation
class _Issues:
    """Bad rows: raised at once (on_error="raise") or collected for dropping ("skip")."""

    def __init__(self, on_error: str, source: str):
        self.raise_now = on_error == "raise"
        self.source = source
        self.bad: dict[int, tuple[str, str]] = {}

    def add(self, row: int, column: str, kind: str, detail: str | None = None):
        reason = f"{kind}: {detail}" if detail else kind
        if self.raise_now:
            raise DataError(reason, row=int(row), column=column, source=self.source)
        self.bad.setdefault(int(row), (column, reason))

    def schema(self, column: str | None, reason: str):
        raise DataError(reason, column=column, source=self.source)


def _rows_where(mask) -> np.ndarray:
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_arrow(col) -> bool:
    return isinstance(col, (pa.Array, pa.ChunkedArray))


def _norm_text(col, name: str, issues: _Issues, *, required: bool, nonempty: bool = False):
    if _is_arrow(col):
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            arr = col.cast(pa.string())
            if required:
                for r in _rows_where(pc.is_null(arr)):
                    issues.add(r, name, "missing value")
            if nonempty:
                for r in _rows_where(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)):
                    issues.add(r, name, "empty prompt")
            return arr
        col = col.to_pylist()
    out = []
    for i, v in enumerate(col):
        if v is None:
            if required:
                issues.add(i, name, "missing value")
        elif not isinstance(v, str):
            issues.add(i, name, "wrong type", f"expected text, got {type(v).__name__} {_short(v)}")
            v = None
        elif nonempty and not v.strip():
            issues.add(i, name, "empty prompt")
        out.append(v)
    return pa.array(out, pa.string())


def _norm_int(col, name: str, issues: _Issues, allowed: tuple[int, ...], kind: str, *, required: bool):
    """Scores (0-3) and preferred ids (1 or 2): integers, or integral floats; NaN counts as missing."""
    if _is_arrow(col) and pa.types.is_integer(col.type):
        arr = col.cast(pa.int64())
        if required:
            for r in _rows_where(pc.is_null(arr)):
                issues.add(r, name, "missing value")
        bad = pc.and_(pc.is_valid(arr), pc.invert(pc.is_in(arr, value_set=pa.array(allowed, pa.int64()))))
        rows = _rows_where(bad)
        for r, v in zip(rows, arr.take(pa.array(rows, pa.int64())).to_pylist()):
            issues.add(r, name, kind, f"got {v}")
        return arr
    out = []
    for i, v in enumerate(_pylist(col)):
        if isinstance(v, float) and math.isnan(v):
            v = None
        if v is None:
            if required:
                issues.add(i, name, "missing value")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            issues.add(i, name, "wrong type", f"expected an integer, got {type(v).__name__} {_short(v)}")
            v = None
        else:
            v = int(v)
            if v not in allowed:
                issues.add(i, name, kind, f"got {v}")
        out.append(v)
    return pa.array(out, pa.int64())


class _MediaCache:
    """Each distinct path string is resolved once and each distinct file / byte string decoded once per load."""

    def __init__(self, root, check: str, workers: int):
        self.root, self.check, self.workers = root, check, workers
        self.paths: dict[str, str | MediaError] = {}
        self.checked: dict[tuple[str, Any], str | None] = {}

    def resolve(self, raw: str) -> str:
        hit = self.paths.get(raw)
        if hit is None:
            try:
                hit = str(resolve_path(raw, None if os.path.isabs(raw) else self.root))
            except MediaError as e:
                hit = e
            self.paths[raw] = hit
        if isinstance(hit, MediaError):
            raise hit
        return hit


def _media_ref(v, modality: str, cache: _MediaCache) -> dict | None:
    """A row's media value -> {"bytes", "path"} (None when empty); MediaError when unusable."""
    if v is None:
        return None
    if isinstance(v, str):
        return {"bytes": None, "path": cache.resolve(v)} if v.strip() else None
    if isinstance(v, dict):
        if modality == "video":  # video is read from files (PyAV); in-memory frames must be written out first
            if not v.get("path") and ("frames" in v or v.get("bytes") is not None):
                raise MediaError("wrong type: an in-memory video must be written to a file (give its path)")
            return _media_ref(v.get("path"), modality, cache)
        if v.get("bytes") is not None:
            return _media_ref(v["bytes"], modality, cache) | {"path": v.get("path")}
        if v.get("array") is not None and modality == "audio":
            wave = np.asarray(v["array"], dtype=np.float32)
            return {"bytes": encode_wav(wave, int(v.get("sampling_rate") or AUDIO_RATE)), "path": v.get("path")}
        return _media_ref(v.get("path"), modality, cache)
    if isinstance(v, (bytes, bytearray)):
        if modality == "video":
            raise MediaError("wrong type: a video must be a file path or a frames folder, not bytes")
        return {"bytes": bytes(v), "path": None}
    if modality == "image" and isinstance(v, PILImage.Image):
        return {"bytes": encode_png(v.convert("RGB")), "path": None}
    if modality == "image" and isinstance(v, np.ndarray) and v.ndim in (2, 3):
        return {"bytes": encode_png(v), "path": None}
    raise MediaError(f"wrong type: expected a path, bytes or a {{'bytes', 'path'}} dict, got {type(v).__name__}")


def _probe_video(path: str):
    """Open a video and decode its first frame (cheaper than decoding it all, enough to catch a broken file)."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"media file not found: {path!r}")
    if p.is_dir():
        frames = sorted(f for f in p.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)
        if not frames:
            raise MediaError(f"cannot decode video: folder {path!r} holds no frame images")
        load_image(str(frames[0]))
        return
    import av

    try:
        with av.open(str(p)) as container:
            for frame in container.decode(video=0):
                frame.to_ndarray(format="rgb24")
                return
    except Exception as e:
        raise MediaError(f"cannot decode video: {type(e).__name__}: {e}") from None
    raise MediaError(f"cannot decode video: {path!r} holds no frames")


def _check_one(modality: str, ref: dict, check: str) -> str | None:
    """None when the medium is usable, else the reason."""
    try:
        if ref["bytes"] is None and not os.path.exists(ref["path"]):
            raise MediaError(f"media file not found: {ref['path']!r}")
        if check == "exists":
            return None
        if modality == "image":
            load_image(ref)
        elif modality == "audio":
            load_audio(ref)
        else:
            _probe_video(ref["path"])
    except MediaError as e:
        return str(e)
    except Exception as e:  # a decoder failing in a way media.py did not foresee still names the row
        return f"cannot decode {modality}: {type(e).__name__}: {e}"
    return None


def _media_kind(reason: str, modality: str) -> str:
    if "not found" in reason:
        return "missing media file"
    if "escapes" in reason:
        return "media path escapes the root"
    if reason.startswith("wrong type"):
        return "wrong type"
    return f"corrupt {modality}"


def _norm_media(col, name: str, modality: str, issues: _Issues, cache: _MediaCache, *, required: bool):
    values = _pylist(col)
    refs: list[dict | None] = [None] * len(values)
    rows_by_key: dict[tuple[str, Any], list[int]] = {}
    for i, v in enumerate(values):
        try:
            ref = _media_ref(v, modality, cache)
        except MediaError as e:
            issues.add(i, name, _media_kind(str(e), modality), str(e).removeprefix("wrong type: "))
            continue
        if ref is None:
            if required:
                issues.add(i, name, "missing value")
            continue
        refs[i] = ref
        key = (modality, ref["path"] if ref["bytes"] is None else ref["bytes"])
        rows_by_key.setdefault(key, []).append(i)
    if cache.check != "off":
        todo = [k for k in rows_by_key if k not in cache.checked]
        first_ref = {k: refs[rows[0]] for k, rows in rows_by_key.items()}
        run = lambda k: _check_one(modality, first_ref[k], cache.check)  # noqa: E731
        if cache.workers > 1 and len(todo) > 1:
            with ThreadPoolExecutor(cache.workers) as pool:
                results = list(pool.map(run, todo))
        else:
            results = [run(k) for k in todo]
        cache.checked.update(zip(todo, results))
        bad = sorted((r, cache.checked[k]) for k, rows in rows_by_key.items() if cache.checked[k] for r in rows)
        for r, reason in bad:
            issues.add(r, name, _media_kind(reason, modality), reason)
    return pa.array(refs, MEDIA_TYPE)


def _column_specs(st: Subtask) -> dict[str, tuple[str, bool]]:
    """Column -> (kind, required). Kinds: prompt, text, int03, choice, image, audio, video."""
    text_resp = "text" if st.text_output or st.response_media_columns else st.response_modality
    specs = {st.prompt_column: ("prompt", True)}
    if st.media_column:
        specs[st.media_column] = (st.inputs[1], True)
    specs.update({c: (text_resp, True) for c in st.response_columns})
    specs.update({c: ("image", True) for c in st.response_media_columns or ()})
    specs.update({c: ("text", False) for c in st.source_columns})
    for dim in st.dimensions:
        specs.update({c: ("int03", False) for c in st.rate_columns(dim)})
        specs.update({c: ("text", False) for c in st.rationale_columns(dim)})
        specs[st.preferred_column(dim)] = ("choice", False)
    specs.update({c: ("text", False) for c in st.critique_columns})
    if st.feedback_column:
        specs[st.feedback_column] = ("text", False)
    specs[st.overall_column] = ("choice", True)
    specs.update({c: ("text", False) for c in st.extra_columns})
    return specs


_FEATURE_OF = {"prompt": Value("string"), "text": Value("string"), "int03": Value("int64"), "choice": Value("int64"),
               "image": Image(), "audio": MEDIA_FEATURE, "video": MEDIA_FEATURE}
_NULL_TYPE = {"prompt": pa.string(), "text": pa.string(), "int03": pa.int64(), "choice": pa.int64(),
              "image": MEDIA_TYPE, "audio": MEDIA_TYPE, "video": MEDIA_TYPE}


# ======================================================================================= foreign formats
def detect_format(columns) -> str:
    """"safe_rlhf", "trl" or "align_anything", from the column names."""
    cols = set(columns)
    if {"response_0", "response_1"} <= cols and cols & {"better_response_id", "safer_response_id"}:
        return "safe_rlhf"
    if {"chosen", "rejected"} <= cols:
        return "trl"
    return "align_anything"


def _need(cols: dict, names, st: Subtask, issues: _Issues, fmt: str):
    """A foreign format's checks: the subtask answers with text and the source has the format's columns."""
    if not st.text_output:
        issues.schema(None, f"{fmt}-format rows hold text responses; subtask {st.name} answers with "
                            f"{'+'.join(st.outputs)}")
    for c in names:
        if c not in cols:
            issues.schema(c, f"missing required column {c!r} for the {fmt} format (columns: {sorted(cols)})")


def _from_safe_rlhf(cols: dict, st: Subtask, issues: _Issues) -> dict:
    _need(cols, ("prompt", "response_0", "response_1", "better_response_id"), st, issues, "safe_rlhf")
    out = {st.prompt_column: cols.pop("prompt"), st.response_columns[0]: cols.pop("response_0"),
           st.response_columns[1]: cols.pop("response_1")}
    targets = [("better_response_id", st.overall_column)]
    if any(d.name == "safety" for d in st.dimensions):
        targets.append(("safer_response_id", st.preferred_column(st.dimension("safety"))))
    for src, dst in targets:
        if src not in cols:
            continue
        ids = []
        for i, v in enumerate(_pylist(cols.pop(src))):
            if v is not None and (isinstance(v, bool) or v not in (0, 1)):
                issues.add(i, src, "preferred id not 0 or 1", f"got {_short(v)}")
                v = None
            ids.append(None if v is None else int(v) + 1)
        out[dst] = ids
    for k, dst in enumerate(st.source_columns):
        if f"response_{k}_source" in cols:
            out[dst] = cols.pop(f"response_{k}_source")
    return out | cols


def _message_text(value, role: str):
    """The text of the last `role` turn of a conversation (or the string itself); other values are returned as-is."""
    if not isinstance(value, list):
        return value
    turns = [m for m in value if isinstance(m, dict) and m.get("role") == role]
    if not turns:
        raise ValueError(f"no {role!r} turn in the conversation")
    content = turns[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise ValueError(f"a {role!r} turn has content of type {type(content).__name__}")


def _from_trl(cols: dict, n: int, st: Subtask, issues: _Issues) -> dict:
    _need(cols, ("chosen", "rejected"), st, issues, "trl")
    chosen, rejected = _pylist(cols.pop("chosen")), _pylist(cols.pop("rejected"))
    implicit = "prompt" not in cols  # TRL's implicit-prompt format: the prompt leads the chosen conversation
    if implicit and not all(isinstance(c, list) or c is None for c in chosen):
        issues.schema("prompt", "missing required column 'prompt' (standard TRL rows need an explicit prompt)")
    prompts = [c[:-1] if isinstance(c, list) else None for c in chosen] if implicit else _pylist(cols.pop("prompt"))
    texts = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(n):
        for name, vals, role in (("prompt", prompts, "user"), ("chosen", chosen, "assistant"),
                                 ("rejected", rejected, "assistant")):
            try:
                v = _message_text(vals[i], role)
            except ValueError as e:
                issues.add(i, name, "wrong type", str(e))
                v = None
            if v is not None and not isinstance(v, str):
                issues.add(i, name, "wrong type", f"expected text or a conversation, got {type(v).__name__}")
                v = None
            texts[name].append(v)
    out = {st.prompt_column: texts["prompt"], st.response_columns[0]: texts["chosen"],
           st.response_columns[1]: texts["rejected"], st.overall_column: [1] * n}
    if st.media_column:
        modality = st.inputs[1]
        key = next((k for k in (f"{modality}s", modality) if k in cols), None)
        if key is None:
            issues.schema(f"{modality}s", f"missing required column '{modality}s' for subtask {st.name}")
        media = []
        for i, v in enumerate(_pylist(cols.pop(key))):
            if isinstance(v, (list, tuple)):
                if len(v) > 1:
                    issues.add(i, key, "wrong type", f"{len(v)} {modality}s; an align-anything row takes one")
                v = v[0] if len(v) == 1 else None
            media.append(v)
        out[st.media_column] = media
    return out | cols


# ======================================================================================= load
def load(source, subtask: str | Subtask, *, media_root: str | os.PathLike | None = None,
         column_map: dict[str, str] | None = None, on_error: Literal["raise", "skip"] = "raise",
         split: str | None = None, fmt: str | None = None,
         check_media: Literal["decode", "exists", "off"] = "decode", num_proc: int | None = None) -> datasets.Dataset:
    """Read, validate and normalize preference rows of one subtask (see the module docstring for every option).

    column_map renames the source's columns first ({"their_name": "default_name"}); fmt forces the format;
    num_proc is the number of threads that decode media (default: up to 4).
    """
    st = get_subtask(subtask)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    if check_media not in ("decode", "exists", "off"):
        raise ValueError(f"check_media must be 'decode', 'exists' or 'off', not {check_media!r}")
    raw = _read(source, split, st, column_map)
    issues = _Issues(on_error, raw.label)
    cols, n = dict(raw.columns), raw.n
    for old, new in (column_map or {}).items():
        if old not in cols:
            issues.schema(old, f"column_map names a column the source lacks (columns: {sorted(cols)})")
        if new in cols and new not in column_map:
            issues.schema(new, f"column_map renames {old!r} onto {new!r}, which the source already has")
    cols = {(column_map or {}).get(k, k): v for k, v in cols.items()}
    fmt = fmt or detect_format(cols)
    if fmt == "safe_rlhf":
        cols = _from_safe_rlhf(cols, st, issues)
    elif fmt == "trl":
        cols = _from_trl(cols, n, st, issues)

    specs = _column_specs(st)
    for name, (kind, required) in specs.items():
        if required and name not in cols:
            issues.schema(name, f"missing required column {name!r} (columns: {sorted(cols)})")
    root = Path(media_root) if media_root is not None else raw.root
    cache = _MediaCache(root, check_media, num_proc or min(4, os.cpu_count() or 1))
    arrays, feats = {}, {}
    for name, (kind, required) in specs.items():
        col = cols.get(name)
        if isinstance(col, list) and kind not in ("image", "audio", "video"):
            try:  # rows parsed in Python: let pyarrow type the column when it can, for the vectorized checks
                col = pa.array(col)
            except (pa.ArrowException, TypeError, ValueError):
                pass  # mixed types: the per-value checks name the row
        if col is None:
            arr = pa.nulls(n, _NULL_TYPE[kind])
        elif _is_arrow(col) and pa.types.is_null(col.type):  # an all-None column read by pyarrow
            for r in range(n if required else 0):
                issues.add(r, name, "missing value")
            arr = pa.nulls(n, _NULL_TYPE[kind])
        elif kind in ("prompt", "text"):
            arr = _norm_text(col, name, issues, required=required, nonempty=kind == "prompt")
        elif kind == "int03":
            arr = _norm_int(col, name, issues, (0, 1, 2, 3), "score outside 0-3", required=required)
        elif kind == "choice":
            arr = _norm_int(col, name, issues, (1, 2), "preferred id not 1 or 2", required=required)
        else:
            arr = _norm_media(col, name, kind, issues, cache, required=required)
        arrays[name], feats[name] = arr, _FEATURE_OF[kind]
    for name, col in cols.items():  # unknown columns pass through untouched
        if name in specs:
            continue
        if not _is_arrow(col):
            try:
                col = pa.array(col)
            except (pa.ArrowException, TypeError, ValueError) as e:
                issues.schema(name, f"extra column cannot be stored in Arrow (mixed types?): {e}")
        arrays[name] = col
        feats[name] = Features.from_arrow_schema(pa.schema([(name, col.type)]))[name]
    table = pa.table(arrays)

    report = Report("load", n, n, sorted((r, c, reason) for r, (c, reason) in issues.bad.items()))
    if issues.bad:
        keep = np.ones(n, dtype=bool)
        keep[list(issues.bad)] = False
        table = table.filter(pa.array(keep))
        report.rows_out = table.num_rows
        warnings.warn(f"aa_lib.data.load({raw.label}): skipped {len(issues.bad)} bad rows of {n} "
                      f"({'; '.join(f'{k}: {v}' for k, v in report.counts().items())}); see ds.aa_report",
                      DataWarning, stacklevel=2)
    info = datasets.DatasetInfo(features=Features(feats), config_name=st.config,
                                description=f"aa_lib.data.load of {raw.label} ({fmt} format)")
    # Our own fingerprint: datasets would otherwise pickle the whole table to hash it (seconds at 50k rows).
    ds = datasets.Dataset(table, info=info, fingerprint=_fingerprint(source, st, fmt, column_map, on_error, root,
                                                                     check_media, split))
    ds.aa_report = report
    return ds


def _fingerprint(source, *options) -> str:
    """Names the loaded content: the source files' identity (path, size, mtime) or an in-memory Dataset's fingerprint,
    plus the load options; a list of rows gets a random one (as datasets does for what it cannot hash)."""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        ident = [d._fingerprint for d in (source.values() if isinstance(source, datasets.DatasetDict) else [source])]
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).resolve()
        data_files = (".parquet", ".jsonl", ".json", ".arrow")  # not the media: a folder may hold 200k of them
        files = sorted(f for f in path.rglob("*") if f.suffix in data_files) if path.is_dir() else [path]
        ident = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    else:
        return uuid.uuid4().hex
    return hashlib.sha256(repr((ident, options)).encode()).hexdigest()[:32]


# ======================================================================================= decoding
def _modality_of(column: str, subtask: Subtask | None) -> str | None:
    kind = _column_specs(subtask).get(column, ("",))[0] if subtask is not None else ""
    if kind in ("image", "audio", "video"):
        return kind
    return next((m for m in ("image", "audio", "video") if m in column), None)


def decode_media(row: dict, column: str, *, subtask: str | Subtask | None = None, modality: str | None = None,
                 media_root=None, num_frames: int | None = None, target_rate: int = AUDIO_RATE):
    """Decode a row's medium: a PIL RGB image, a float32 mono waveform at `target_rate`, or (T, H, W, 3) uint8 frames.

    The modality comes from `modality=`, else the subtask's table, else the column name (image/audio/video in it).
    A list value (e.g. `images` of a converted Dataset) gives a list. Raises DataError naming the column.
    """
    if column not in row:
        raise DataError(f"no column {column!r} in the row (columns: {sorted(row)})", column=column)
    st = get_subtask(subtask) if subtask is not None else None
    modality = modality or _modality_of(column, st)
    if modality not in ("image", "audio", "video"):
        raise DataError("cannot tell the column's modality: pass modality= or subtask=", column=column)
    value = row[column]
    if isinstance(value, list):
        return [decode_media({column: v}, column, modality=modality, media_root=media_root, num_frames=num_frames,
                             target_rate=target_rate) for v in value]
    try:
        if modality == "image":
            return load_image(value, media_root)
        if modality == "audio":
            return load_audio(value, media_root, target_rate=target_rate)
        return load_video(value, media_root, num_frames=num_frames)
    except MediaError as e:
        raise DataError(str(e), column=column) from None


# ======================================================================================= conversions to TRL formats
def _subtask_of(ds: datasets.Dataset, subtask) -> Subtask:
    if subtask is not None:
        return get_subtask(subtask)
    name = ds.info.config_name
    try:
        return get_subtask(name)
    except KeyError:
        raise ValueError("the Dataset does not say its subtask (ds.info.config_name): load it with "
                         "aa_lib.data.load or pass subtask=") from None


def _typed(st: Subtask) -> bool:
    return st.inputs != ("text",) or st.outputs != ("text",)


def _content(st: Subtask, text: str | None = None, before: tuple = (), after: tuple = ()):
    if not _typed(st):
        return text
    parts = [{"type": m, "text": None} for m in before]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return parts + [{"type": m, "text": None} for m in after]


def _messages_feature(st: Subtask):
    content = List({"type": Value("string"), "text": Value("string")}) if _typed(st) else Value("string")
    return List({"role": Value("string"), "content": content})


def _media_list_feature(modality: str):
    return List(Image()) if modality == "image" else List(MEDIA_FEATURE)


def _arrow_view(ds: datasets.Dataset, columns: list[str]) -> pa.Table:
    return ds.select_columns(columns).with_format("arrow")[:]


def _same(a, b):
    """Null-safe equality of two columns (strings or media structs)."""
    if pa.types.is_struct(a.type):
        return pc.and_(_same(pc.struct_field(a, "path"), pc.struct_field(b, "path")),
                       _same(pc.struct_field(a, "bytes"), pc.struct_field(b, "bytes")))
    return pc.fill_null(pc.or_kleene(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b))), False)


def _convert(ds, fn, features: Features, report: Report, keep: np.ndarray) -> datasets.Dataset:
    """Map fn over Arrow batches of the rows in `keep` (media references reach fn undecoded; map writes them back
    under the new features). Rows are skipped inside the map rather than by `ds.select`, whose index gather costs
    more than the conversion."""
    def run(batch: pa.Table, indices: list[int]):
        rows = [j for j, i in enumerate(indices) if keep[i]]
        if len(rows) < batch.num_rows:
            batch = batch.take(pa.array(rows, pa.int64()))
        return fn(batch, [indices[j] for j in rows])

    out = ds.with_format("arrow").map(run, batched=True, batch_size=1000, with_indices=True,
                                      remove_columns=ds.column_names, features=features).with_format(None)
    report.rows_out = len(out)
    out.aa_report = report
    return out


class _Turns:
    """Builds a subtask's conversation turns from a batch of normalized rows."""

    def __init__(self, st: Subtask, batch: pa.Table):
        self.st, self.batch = st, batch
        self.in_mod = st.inputs[1] if st.media_column else None
        self.out_mod = _response_modality(st)
        self.prompts = batch.column(st.prompt_column).to_pylist()
        self.media = batch.column(st.media_column).to_pylist() if st.media_column else None

    def col(self, name):
        return self.batch.column(name).to_pylist()

    @functools.cached_property
    def responses(self) -> tuple[list, list | None]:
        """The two response columns, and the two response media columns (ti2ti) or None."""
        media = self.st.response_media_columns
        return [self.col(c) for c in self.st.response_columns], [self.col(c) for c in media] if media else None

    def user(self, j: int) -> dict:
        before = (self.in_mod,) if self.in_mod else ()
        return {"role": "user", "content": _content(self.st, self.prompts[j], before=before)}

    def response(self, j: int, k: int) -> tuple[dict, list]:
        """The assistant turn with response k (1 or 2), and the response's media (for its placeholders)."""
        st, (resp, resp_media) = self.st, self.responses
        if st.text_output:
            return {"role": "assistant", "content": _content(st, resp[k - 1][j])}, []
        if resp_media is not None:  # ti2ti: text then image
            content = _content(st, resp[k - 1][j], after=("image",))
            return {"role": "assistant", "content": content}, [resp_media[k - 1][j]]
        return {"role": "assistant", "content": _content(st, after=(st.response_modality,))}, [resp[k - 1][j]]

    def add_media(self, out: dict, j: int, media: list):
        """Append row j's conversation media (the prompt's, then the response's `media`) to the lists in `out`."""
        lists = {m: [] for m in out if m not in ("prompt", "completion")}
        if self.in_mod:
            lists[f"{self.in_mod}s"].append(self.media[j])
        if self.out_mod:
            lists[f"{self.out_mod}s"] += media
        for m, v in lists.items():
            out[m].append(v)


def _response_modality(st: Subtask) -> str | None:
    """The modality of media inside a response (None for text answers)."""
    if st.response_media_columns:
        return "image"
    return None if st.text_output else st.response_modality


def _pairs(ds: datasets.Dataset, st: Subtask, dimension: str | None, drop_same: bool, stage: str):
    """Rows with a label (and, with drop_same, different responses): (keep mask, label column, Report)."""
    label_col = st.overall_column if dimension is None else st.preferred_column(st.dimension(dimension))
    resp_cols = [*st.response_columns, *(st.response_media_columns or ())]
    t = _arrow_view(ds, [label_col, *resp_cols])
    labels = pc.fill_null(t.column(label_col), 0).to_numpy(zero_copy_only=False)
    keep = np.isin(labels, (1, 2))
    dropped = [(int(i), label_col, "no preference label") for i in np.flatnonzero(~keep)]
    if drop_same:
        same = np.ones(len(t), dtype=bool)
        for a, b in zip(resp_cols[0::2], resp_cols[1::2]):
            same &= _same(t.column(a), t.column(b)).to_numpy(zero_copy_only=False)
        same &= keep
        dropped += [(int(i), st.response_columns[0], "chosen equals rejected") for i in np.flatnonzero(same)]
        keep &= ~same
    return keep, label_col, Report(stage, len(ds), int(keep.sum()), sorted(dropped))


def _pair_features(st: Subtask) -> dict:
    msgs = _messages_feature(st)
    feats = {"prompt": msgs, "chosen": msgs, "rejected": msgs}
    if st.media_column:
        feats[f"{st.inputs[1]}s"] = _media_list_feature(st.inputs[1])
    out_mod = _response_modality(st)
    if out_mod:
        feats[f"chosen_{out_mod}s"] = feats[f"rejected_{out_mod}s"] = _media_list_feature(out_mod)
    return feats


def _pair_rows(st: Subtask, label_col: str):
    def fn(batch: pa.Table, indices) -> dict:
        turns = _Turns(st, batch)
        out = {k: [] for k in _pair_features(st)}
        for j, k in enumerate(turns.col(label_col)):
            out["prompt"].append([turns.user(j)])
            for side, idx in (("chosen", k), ("rejected", 3 - k)):
                msg, media = turns.response(j, idx)
                out[side].append([msg])
                if turns.out_mod:
                    out[f"{side}_{turns.out_mod}s"].append(media)
            if st.media_column:
                out[f"{turns.in_mod}s"].append([turns.media[j]])
        return out

    return fn


def to_preference(ds: datasets.Dataset, dimension: str | None = None, *, subtask=None) -> datasets.Dataset:
    """Preference pairs in TRL's explicit-prompt conversational format, by the overall preference or one dimension.

    Keys: `prompt` ([user turn]), `chosen` / `rejected` ([assistant turn]), the prompt's media in
    `images`/`audios`/`videos`, response media (t2i, t2a, t2v, ti2ti) in `chosen_<m>s` / `rejected_<m>s`.
    Rows without a label for the chosen dimension, and pairs whose chosen equals rejected, are dropped and
    reported in `.aa_report`.
    """
    st = _subtask_of(ds, subtask)
    keep, label_col, report = _pairs(ds, st, dimension, True, f"to_preference({dimension or 'overall'})")
    return _convert(ds, _pair_rows(st, label_col), Features(_pair_features(st)), report, keep)


def to_reward_pairs(ds: datasets.Dataset, dimension: str | None = None, *, subtask=None) -> datasets.Dataset:
    """Reward-model pairs (TRL RewardTrainer, implicit prompt): `chosen` / `rejected` are whole conversations
    (user turn + assistant turn); media keys as in `to_preference`."""
    st = _subtask_of(ds, subtask)
    keep, label_col, report = _pairs(ds, st, dimension, True, f"to_reward_pairs({dimension or 'overall'})")
    pair_fn = _pair_rows(st, label_col)

    def fn(batch, indices):
        out = pair_fn(batch, indices)
        prompts = out.pop("prompt")
        out["chosen"] = [p + c for p, c in zip(prompts, out["chosen"])]
        out["rejected"] = [p + r for p, r in zip(prompts, out["rejected"])]
        return out

    feats = _pair_features(st)
    del feats["prompt"]
    return _convert(ds, fn, Features(feats), report, keep)


def _conversation_features(st: Subtask, *keys: str) -> dict:
    feats = {k: _messages_feature(st) for k in keys}
    for m in dict.fromkeys(m for m in (*st.inputs[1:], _response_modality(st)) if m):
        feats[f"{m}s"] = _media_list_feature(m)
    return feats


def to_sft(ds: datasets.Dataset, *, subtask=None) -> datasets.Dataset:
    """Policy SFT in TRL's prompt-completion conversational format: prompt -> the overall preferred response.

    `images`/`audios`/`videos` list the conversation's media in placeholder order (prompt media, then response media).
    """
    st = _subtask_of(ds, subtask)
    keep, label_col, report = _pairs(ds, st, None, False, "to_sft")
    feats = _conversation_features(st, "prompt", "completion")

    def fn(batch, indices):
        turns = _Turns(st, batch)
        out = {k: [] for k in feats}
        for j, k in enumerate(turns.col(label_col)):
            msg, media = turns.response(j, k)
            out["prompt"].append([turns.user(j)])
            out["completion"].append([msg])
            turns.add_media(out, j, media)
        return out

    return _convert(ds, fn, Features(feats), report, keep)


def to_feedback_sft(ds: datasets.Dataset, *, subtask=None) -> datasets.Dataset:
    """Feedback-model SFT (SPEC §3.1), two examples per row (one per response), prompt-completion format so the loss
    falls on the critique only: prompt = [user: media + x, assistant: y, user: critique request], completion =
    [assistant: critique c]. Responses without a critique are dropped and reported."""
    st = _subtask_of(ds, subtask)
    audio = "audio" in st.inputs or "audio" in st.outputs
    request = CRITIQUE_REQUEST_AUDIO if audio else CRITIQUE_REQUEST
    t = _arrow_view(ds, list(st.critique_columns))
    has, dropped = [], []
    for c in st.critique_columns:
        length = pc.utf8_length(pc.utf8_trim_whitespace(t.column(c)))
        ok = pc.fill_null(pc.greater(length, 0), False).to_numpy(zero_copy_only=False)
        has.append(ok)
        dropped += [(int(i), c, "no critique") for i in np.flatnonzero(~ok)]
    report = Report("to_feedback_sft", len(ds), 0, sorted(dropped))
    feats = _conversation_features(st, "prompt", "completion")

    def fn(batch, indices):
        turns = _Turns(st, batch)
        crit = [turns.col(c) for c in st.critique_columns]
        out = {k: [] for k in feats}
        for j, idx in enumerate(indices):
            for k in (1, 2):
                if not has[k - 1][idx]:
                    continue
                msg, media = turns.response(j, k)
                out["prompt"].append([turns.user(j), msg, {"role": "user", "content": _content(st, request)}])
                out["completion"].append([{"role": "assistant", "content": _content(st, crit[k - 1][j].strip())}])
                turns.add_media(out, j, media)
        return out

    return _convert(ds, fn, Features(feats), report, has[0] | has[1])


def _media_key(ref: dict | None) -> str | None:
    if ref is None:
        return None
    return ref["path"] if ref.get("bytes") is None else hashlib.sha1(ref["bytes"]).hexdigest()


def to_prompts(ds: datasets.Dataset, *, subtask=None) -> datasets.Dataset:
    """Prompt-only rows for generation: `prompt` ([user turn]) + the prompt's media key, deduplicated by prompt text
    and medium (same path or same bytes); the first occurrence is kept."""
    st = _subtask_of(ds, subtask)
    cols = [st.prompt_column, *([st.media_column] if st.media_column else [])]
    seen, dropped, start = set(), [], 0
    keep = np.zeros(len(ds), dtype=bool)
    for batch in _arrow_view(ds, cols).to_batches(max_chunksize=1000):
        texts = batch.column(0).to_pylist()
        media = batch.column(1).to_pylist() if st.media_column else [None] * len(texts)
        for j, (text, ref) in enumerate(zip(texts, media)):
            key = (text, _media_key(ref))
            if key in seen:
                dropped.append((start + j, st.prompt_column, "duplicate prompt"))
            else:
                seen.add(key)
                keep[start + j] = True
        start += len(texts)
    report = Report("to_prompts", len(ds), int(keep.sum()), dropped)
    feats = {"prompt": _messages_feature(st)}
    if st.media_column:
        feats[f"{st.inputs[1]}s"] = _media_list_feature(st.inputs[1])

    def fn(batch, indices):
        turns = _Turns(st, batch)
        out = {"prompt": [[turns.user(j)] for j in range(batch.num_rows)]}
        if st.media_column:
            out[f"{turns.in_mod}s"] = [[m] for m in turns.media]
        return out

    return _convert(ds, fn, Features(feats), report, keep)
