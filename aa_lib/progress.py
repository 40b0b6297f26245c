"""Progress bars for the long stages (training steps, generation batches, synthesis), through tqdm.auto: widgets in
JupyterLab (ipywidgets), plain text elsewhere.

Shown inside a notebook kernel, where a researcher waits minutes on one cell; hidden in scripts and tests, whose
logs they would fill. `AA_PROGRESS=1` / `AA_PROGRESS=0` forces either. Bars refresh at most once a second, and an
executed notebook keeps each bar as one widget whose state is updated in place, not as thousands of lines.
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def enabled() -> bool:
    forced = os.environ.get("AA_PROGRESS", "").strip().lower()
    if forced:
        return forced not in ("0", "false", "no")
    return "ipykernel" in sys.modules


def bar(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it") -> tqdm:
    """A tqdm.auto bar, disabled outside notebooks (`enabled`)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled(), mininterval=1.0, leave=False)


def trainer_kwargs() -> dict:
    """transformers TrainingArguments that show the Trainer's own step bar exactly where `bar` shows."""
    return {"disable_tqdm": not enabled()}
