"""The records of the files aa_lib evaluates from (AMU, AMG, the Table 2 benchmarks): one reader for JSON and JSONL
files, and pydantic validation whose errors name the file, the record and the field
(`amu.jsonl: entry 3 (id q3): field 'references[0].answer': Field required`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import AfterValidator, Field


def read_json(path) -> Any:
    """A JSON file's value; invalid JSON names the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path) -> list:
    """The records of a JSON Lines file (blank lines skipped); invalid JSON names the file and line."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
    return rows


def read_records(path, what: str = "entries", allow_empty: bool = True) -> list:
    """The records of a `.jsonl` file, or of a `.json` file holding a list of `what`."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
    else:
        records = read_json(path)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of {what}, got {type(records).__name__}")
    if not records and not allow_empty:
        raise ValueError(f"{path}: expected a non-empty list of {what}")
    return records


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a non-empty string")
    return value


# Record field types: text that must say something (whitespace alone is no question, answer or path), and an id
# that files write as a string or a number, kept as a string.
NonEmptyStr = Annotated[str, AfterValidator(_non_blank)]
RecordId = Annotated[str, Field(coerce_numbers_to_str=True)]
RecordT = TypeVar("RecordT")


def parse_record(model: type[RecordT], record: Any, where: str, context: dict | None = None) -> RecordT:
    """`record` validated as `model`, a pydantic model or dataclass (its validators see `context`), else ValueError
    "<where>: field 'a[2].b': why"."""
    try:
        return model.__pydantic_validator__.validate_python(record, context=context)
    except pydantic.ValidationError as e:
        errors = e.errors()
    err = errors[0]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    if err["type"] == "value_error":  # a validator's own words, without pydantic's "Value error, " prefix
        problem = str(err["ctx"]["error"])
    elif err["type"] in ("model_type", "dataclass_type"):  # pydantic would name a class the file never shows
        problem = f"expected an object (got {err['input']!r:.60})"
    else:
        problem = err["msg"] if err["type"] == "missing" else f"{err['msg']} (got {err['input']!r:.60})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ValueError(f"{where}: " + (f"field {name!r}: " if name else "") + problem + more)
