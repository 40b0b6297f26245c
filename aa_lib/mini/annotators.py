"""Simulated annotators: the Table 1 analogue (preference agreement with and without language feedback), from data.

Model (assumptions, world parameters, not tuned toward the paper's numbers):
- An annotator sees a pair and the rubric's true dimension scores are what there is to perceive. For each response
  and dimension, a deficit (3 - score) is noticed with probability DETECT[protocol][modality]; an unnoticed
  deficit looks like a perfect score. The modality is what must be perceived to notice it: for text answers about
  media, prompt following / objective rules / richness need the input media (image, video, audio), clarity and
  safety only the text; for media outputs every dimension needs the output media.
- Fine-grained dimensions (all but prompt/instruction following, objective rules and safety) are noticed less in a
  quick binary glance (times FINE_GLANCE); writing a critique per response forces attending to each dimension.
- The annotator prefers the response with the higher perceived weighted score (`rubric.WEIGHTS`); on a perceived
  tie she flips her own coin; with probability LAPSE a label is a random click.
Agreement of a group = mean over annotator pairs of the share of pairs labelled alike (%); mean and std are taken
over independent groups (fresh annotators on a fresh sample of pairs).
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd

from aa_lib.mini.rubric import WEIGHTS
from aa_lib.subtasks import get_subtask

DETECT = {
    "binary": {"text": 0.85, "image": 0.6, "video": 0.5, "audio": 0.5},
    "feedback": {"text": 0.93, "image": 0.85, "video": 0.8, "audio": 0.8},
}
FINE_GLANCE = 0.7  # multiplier on DETECT["binary"] for fine-grained dimensions
LAPSE = 0.05
COARSE = ("prompt_following", "instruction_following", "objective_rules", "safety")
PROTOCOL_COLUMNS = {"binary": "without_lf", "feedback": "with_lf"}


def _dim_modality(subtask, dim: str) -> str:
    st = get_subtask(subtask)
    if st.text_output:
        media = [m for m in st.inputs if m != "text"]
        return media[0] if media and dim not in ("clarity", "safety") else "text"
    if st.name == "ti2ti":
        return "text" if dim == "information_richness" else "image"
    return st.response_modality


def detect_probs(subtask, protocol: str) -> dict[str, float]:
    if protocol not in DETECT:
        raise ValueError(f"unknown protocol {protocol!r}; known: {list(DETECT)}")
    st = get_subtask(subtask)
    out = {}
    for d in st.dimensions:
        p = DETECT[protocol][_dim_modality(st, d.name)]
        if protocol == "binary" and d.name not in COARSE:
            p *= FINE_GLANCE
        out[d.name] = p
    return out


def annotate(rows: list[dict], protocol: str, n_annotators: int = 10, seed: int = 0, subtask: str | None = None,
             dimension: str | None = None) -> np.ndarray:
    """Choices (n_annotators, n_rows) in {1, 2} of simulated annotators labelling each row's pair under `protocol`:
    the overall preference, or the preference on one `dimension` (then only that dimension's deficits count)."""
    if not rows:
        raise ValueError("annotate needs at least one row")
    st = get_subtask(subtask or json.loads(rows[0]["mini_meta"])["subtask"])
    probs = detect_probs(st, protocol)
    dims = list(st.dimensions)
    try:
        scores = np.array([[[row[st.rate_columns(d)[k]] for d in dims] for k in (0, 1)] for row in rows], float)
    except KeyError as e:
        raise KeyError(f"annotate: a row lacks the rate column {e} of subtask {st.name}") from None
    weights = np.array([WEIGHTS.get(d.name, 1.0) for d in dims])
    if dimension is not None:
        weights = np.array([1.0 if d.name == st.dimension(dimension).name else 0.0 for d in dims])
    p = np.array([probs[d.name] for d in dims])
    rng = np.random.default_rng([seed, 7])
    n = len(rows)
    deficit = 3.0 - scores  # (n, 2, dims)
    seen = rng.random((n_annotators, n, 2, len(dims))) < p
    perceived = ((3.0 - deficit * seen) * weights).sum(-1)  # (A, n, 2)
    choice = np.where(perceived[..., 0] > perceived[..., 1], 1, 2)
    coin = rng.integers(1, 3, size=(n_annotators, n))
    choice = np.where(perceived[..., 0] == perceived[..., 1], coin, choice)
    lapse = rng.random((n_annotators, n)) < LAPSE
    return np.where(lapse, rng.integers(1, 3, size=(n_annotators, n)), choice)


def pairwise_agreement(choices: np.ndarray) -> float:
    """Mean over annotator pairs of the % of items both labelled alike."""
    choices = np.asarray(choices)
    pairs = list(itertools.combinations(range(len(choices)), 2))
    if not pairs:
        raise ValueError("agreement needs at least two annotators")
    return float(np.mean([(choices[i] == choices[j]).mean() for i, j in pairs]) * 100)


def label_study(rows_by_subtask: dict[str, list[dict]], n_groups: int = 5, n_annotators: int = 10,
                n_pairs: int = 100, seed: int = 0) -> pd.DataFrame:
    """Labels of `n_groups` independent annotator groups, each on its own sample of `n_pairs` rows, under both
    protocols. Long format: subtask, protocol, group, annotator, row, choice."""
    recs = []
    for s_idx, (subtask, rows) in enumerate(rows_by_subtask.items()):
        rng = np.random.default_rng([seed, s_idx])
        for g in range(n_groups):
            idx = rng.choice(len(rows), size=min(n_pairs, len(rows)), replace=False)
            sample = [rows[i] for i in idx]
            for protocol in DETECT:
                ch = annotate(sample, protocol, n_annotators, seed=int(rng.integers(2**31)), subtask=subtask)
                for a in range(n_annotators):
                    recs += [(get_subtask(subtask).name, protocol, g, a, int(r), int(c)) for r, c in zip(idx, ch[a])]
    return pd.DataFrame(recs, columns=["subtask", "protocol", "group", "annotator", "row", "choice"])


def agreement(labels: pd.DataFrame) -> pd.DataFrame:
    """Per subtask: mean and std over groups of pairwise agreement (%), without and with language feedback
    (columns as in the paper's table1_agreement.csv: without_lf_mean, without_lf_std, with_lf_mean, with_lf_std)."""
    need = {"subtask", "protocol", "group", "annotator", "row", "choice"}
    if not need <= set(labels.columns):
        raise KeyError(f"labels lack columns {sorted(need - set(labels.columns))}")
    out = {}
    for (subtask, protocol, group), df in labels.groupby(["subtask", "protocol", "group"], sort=False):
        mat = df.pivot(index="annotator", columns="row", values="choice").to_numpy()
        out.setdefault(subtask, {}).setdefault(protocol, []).append(pairwise_agreement(mat))
    table = []
    for subtask, by in out.items():
        rec = {"subtask": get_subtask(subtask).code}
        for protocol, vals in by.items():
            col = PROTOCOL_COLUMNS.get(protocol, protocol)
            rec[f"{col}_mean"] = round(float(np.mean(vals)), 2)
            rec[f"{col}_std"] = round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 2)
        table.append(rec)
    return pd.DataFrame(table)


# The paper's Fig. 13 looks at the dimensions every subtask shares, and the overall preference.
MODALITY_AGNOSTIC = ("prompt_following", "objective_rules", "information_richness", "safety")


def human_ai_agreement(rows: list[dict], n_annotators: int = 10, seed: int = 0, subtask: str | None = None,
                       protocol: str = "feedback") -> pd.DataFrame:
    """Fig. 13 analogue: % of (annotator, pair) labels on which a simulated human agrees with the AI annotation.

    The AI annotation is the row's own label (`<x>_response` per dimension, the overall column): in the mini world
    it is the rubric's verdict, which reads the media through the checkers, as GPT-4o / Gemini annotated the real
    data jointly with humans. Columns: subtask, dimension, agreement, n_pairs; dimension "overall" included.
    """
    if not rows:
        raise ValueError("human_ai_agreement needs at least one row")
    st = get_subtask(subtask or json.loads(rows[0]["mini_meta"])["subtask"])
    names = [d.name for d in st.dimensions if d.name in MODALITY_AGNOSTIC] + ["overall"]
    recs = []
    for k, name in enumerate(names):
        dim = None if name == "overall" else name
        human = annotate(rows, protocol, n_annotators, seed=seed + 1000 * k, subtask=st.name, dimension=dim)
        column = st.overall_column if dim is None else st.preferred_column(st.dimension(dim))
        ai = np.array([row[column] for row in rows])
        # A pair the rubric scores equal on this dimension has no AI preference (its label is a coin): left out.
        if dim is not None:
            r1, r2 = st.rate_columns(st.dimension(dim))
            keep = np.array([row[r1] != row[r2] for row in rows])
        else:
            keep = np.array([len(set(json.loads(row["mini_meta"])["overall_scores"])) == 2 for row in rows])
        if keep.any():
            recs.append({"subtask": st.code, "dimension": name, "n_pairs": int(keep.sum()),
                         "agreement": round(float((human[:, keep] == ai[keep]).mean() * 100), 2)})
    return pd.DataFrame(recs, columns=["subtask", "dimension", "agreement", "n_pairs"])
