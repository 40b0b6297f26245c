"""One style for every figure and table in `paper_figures/`, and the paper's reported numbers to show beside ours.

Figure notebooks read run results (`aa_lib.runs.load_results`), draw with these helpers and save through
`save_figure` / `save_table`, which write atomically and deterministically (no timestamps in PDF/PNG metadata, so an
unchanged figure is byte-identical on a rerun).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from aa_lib.media import write_bytes_atomic, write_text_atomic

FIGURES_DIR = Path(__file__).resolve().parent.parent / "paper_figures"
REPORTED_DIR = Path(__file__).resolve().parent / "reported"  # copied verbatim from shared/paper/reported
OURS, PAPER = "aa_lib (tiny profile, measured)", "paper (reported)"
PALETTE = {"ours": "#1f77b4", "paper": "#bbbbbb"}


def reported(name: str) -> pd.DataFrame:
    """The paper's reported numbers, e.g. `reported("table1_agreement")`: a reference, never a result."""
    path = REPORTED_DIR / f"{name}.csv"
    if not path.exists():
        have = ", ".join(sorted(p.stem for p in REPORTED_DIR.glob("*.csv")))
        raise FileNotFoundError(f"no reported table {name!r} in {REPORTED_DIR} (have: {have})")
    return pd.read_csv(path)


def set_style() -> None:
    import matplotlib
    import seaborn as sns

    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "svg.hashsalt": "aa_lib",
                                "pdf.fonttype": 42, "axes.titlesize": 11, "axes.labelsize": 10})
    sns.set_theme(context="paper", style="whitegrid", palette="deep", font_scale=1.1)


def save_figure(fig, name: str, out_dir: str | os.PathLike = FIGURES_DIR) -> list[Path]:
    """`<name>.png` and `<name>.pdf`, without the timestamps that would make reruns differ."""
    paths = []
    for fmt, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata=meta)
        paths.append(write_bytes_atomic(Path(out_dir) / f"{name}.{fmt}", buf.getvalue()))
    return paths


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else floatfmt.format(v)
        return str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, out_dir: str | os.PathLike = FIGURES_DIR, title: str | None = None,
               floatfmt: str = "{:.2f}") -> list[Path]:
    """`<name>.csv` (full precision) and `<name>.md` (rounded, with an optional title line)."""
    md = (f"**{title}**\n\n" if title else "") + to_markdown(df, floatfmt)
    return [write_text_atomic(Path(out_dir) / f"{name}.csv", df.to_csv(index=False)),
            write_text_atomic(Path(out_dir) / f"{name}.md", md)]
