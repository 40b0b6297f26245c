"""One style for every figure and table in `paper_figures/`, and the paper's reported numbers to show beside ours.

Figure notebooks read run results (`aa_lib.runs.load_results`), draw with these helpers and save through
`save_figure` / `save_table`, which write atomically and deterministically (no timestamps in PDF/PNG metadata, so an
unchanged figure is byte-identical on a rerun).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from aa_lib.media import write_bytes_atomic, write_text_atomic

FIGURES_DIR = Path(__file__).resolve().parent.parent / "paper_figures"
REPORTED_DIR = Path(__file__).resolve().parent / "reported"  # copied verbatim from shared/paper/reported
OURS, PAPER = "aa_lib (tiny profile, measured)", "paper (reported)"
PALETTE = {"ours": "#1f77b4", "paper": "#bbbbbb"}


def figures_dir() -> Path:
    """Where figures go: `$AA_FIGURES_DIR` (the batch runner's smoke runs set it) or the repository's paper_figures/."""
    return Path(os.environ.get("AA_FIGURES_DIR") or FIGURES_DIR)


def ours(profile: str = "tiny") -> str:
    """The label of this package's numbers at a profile (a paper-profile run, the rehearsal's too, is not tiny)."""
    return OURS if profile == "tiny" else f"aa_lib ({profile} profile, measured)"


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


def save_figure(fig, name: str, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """`<name>.png` and `<name>.pdf`, without the timestamps that would make reruns differ."""
    paths = []
    for fmt, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata=meta)
        paths.append(write_bytes_atomic(Path(out_dir or figures_dir()) / f"{name}.{fmt}", buf.getvalue()))
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


def save_table(df: pd.DataFrame, name: str, out_dir: str | os.PathLike | None = None, title: str | None = None,
               floatfmt: str = "{:.2f}") -> list[Path]:
    """`<name>.csv` (full precision) and `<name>.md` (rounded, with an optional title line)."""
    md = (f"**{title}**\n\n" if title else "") + to_markdown(df, floatfmt)
    out_dir = out_dir or figures_dir()
    return [write_text_atomic(Path(out_dir) / f"{name}.csv", df.to_csv(index=False)),
            write_text_atomic(Path(out_dir) / f"{name}.md", md)]


# ---------------------------------------------------------------- the data figures (Table 1, Figs. 2/12)
def plot_agreement(ours: pd.DataFrame, paper: pd.DataFrame, note: str = ""):
    """Table 1 as bars: agreement (%) without / with language feedback per subtask, ours beside the paper's.
    Both frames have columns subtask, without_lf_mean, without_lf_std, with_lf_mean, with_lf_std."""
    import matplotlib.pyplot as plt

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (label, df) in zip(axes, ((OURS, ours), (PAPER, paper))):
        x = np.arange(len(df))
        for k, (col, name, color) in enumerate((("without_lf", "binary feedback only", "#999999"),
                                                ("with_lf", "with language feedback", PALETTE["ours"]))):
            ax.bar(x + (k - 0.5) * 0.38, df[f"{col}_mean"], 0.38, yerr=df[f"{col}_std"], capsize=3,
                   color=color, label=name)
        ax.set_xticks(x, df["subtask"])
        ax.set_title(label)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("pairwise annotator agreement (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    if note:
        fig.text(0.5, -0.04, note, ha="center", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_composition(counts: pd.DataFrame):
    """Fig. 2 / Fig. 12 (left): rows per subtask, stacked by prompt type. `counts`: subtask, prompt_type, rows."""
    import matplotlib.pyplot as plt

    set_style()
    table = counts.pivot_table(index="subtask", columns="prompt_type", values="rows", aggfunc="sum", fill_value=0)
    table = table.loc[list(counts["subtask"].drop_duplicates())]
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = None
    colors = plt.get_cmap("tab20").colors
    for k, col in enumerate(table.columns):
        ax.bar(table.index, table[col], bottom=bottom, label=col, color=colors[k % len(colors)])
        bottom = table[col] if bottom is None else bottom + table[col]
    ax.set_ylabel("preference pairs (rows)")
    ax.set_title("Composition by subtask and prompt type")
    ax.legend(ncol=2, fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", title="prompt type")
    fig.tight_layout()
    return fig


def plot_embedding_map(points: pd.DataFrame):
    """Fig. 2 / Fig. 12 (right): 2-D map of prompt embeddings coloured by subtask. `points`: subtask, x, y."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    set_style()
    fig, ax = plt.subplots(figsize=(6, 5))
    sns.scatterplot(data=points, x="x", y="y", hue="subtask", s=12, alpha=0.7, linewidth=0, ax=ax)
    ax.set_xlabel("PC 1 of all-MiniLM-L6-v2 prompt embeddings")
    ax.set_ylabel("PC 2")
    ax.set_title("Text prompt distribution across subtasks")
    ax.legend(fontsize=7, markerscale=1.5, title="subtask")
    fig.tight_layout()
    return fig


def plot_human_ai_agreement(table: pd.DataFrame):
    """Fig. 13: human-AI agreement (%) per subtask, for each modality-agnostic dimension and the overall preference.
    `table`: subtask, dimension, agreement (mean over seeds), agreement_std."""
    import matplotlib.pyplot as plt

    set_style()
    subtasks = list(dict.fromkeys(table["subtask"]))
    dims = list(dict.fromkeys(table["dimension"]))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(dims)
    colors = plt.get_cmap("tab10").colors
    for k, dim in enumerate(dims):
        sub = table[table["dimension"] == dim].set_index("subtask").reindex(subtasks)
        x = np.arange(len(subtasks)) + (k - (len(dims) - 1) / 2) * width
        ax.bar(x, sub["agreement"], width, yerr=sub.get("agreement_std"), capsize=2, label=dim.replace("_", " "),
               color="#333333" if dim == "overall" else colors[k % 10])
    ax.set_xticks(np.arange(len(subtasks)), subtasks)
    ax.set_ylim(0, 100)
    ax.set_ylabel("human-AI agreement (%)")
    ax.set_title(f"{OURS}: simulated annotators vs the AI (rubric) annotation")
    ax.legend(ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    return fig


# Two-sided 95 % Student t quantiles by degrees of freedom (scipy is not a dependency).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % t confidence interval, n) of per-seed values (NaNs left out; n < 2: width NaN)."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan"), len(v)
    half = T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half), len(v)


def paired_delta(deltas, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): a 95 % interval of the mean of paired per-prompt differences `deltas` (seeds x prompts,
    method minus initial on the same prompt), by a two-way bootstrap that resamples seeds and prompts, so that both
    the training seeds' spread and the prompts' spread widen it."""
    d = np.asarray(deltas, dtype=float)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired_delta: expected a (seeds x prompts) array, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    s = rng.integers(0, d.shape[0], size=(reps, d.shape[0]))
    p = rng.integers(0, d.shape[1], size=(reps, d.shape[1]))
    means = np.array([d[np.ix_(si, pi)].mean() for si, pi in zip(s, p)])
    low, high = np.quantile(means, [0.025, 0.975])
    return float(d.mean()), float(low), float(high)
