"""What a preference dataset holds: rows per subtask and prompt type, response sources, a prompt embedding map.

Feeds Fig. 2 / Fig. 12 (composition and prompt distribution) and Table 9 (sources). Works on any loaded dataset:
mini rows carry their prompt type in `mini_meta`; rows of the real align-anything-200k have none ("all").
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from aa_lib.subtasks import get_subtask


def prompt_types(ds) -> list[str]:
    """Each row's prompt type, from its `mini_meta`; "all" where the dataset or the row has none."""
    if "mini_meta" not in ds.column_names:
        return ["all"] * len(ds)
    return [json.loads(m).get("prompt_type", "all") if m else "all" for m in ds["mini_meta"]]


def composition(datasets: dict) -> pd.DataFrame:
    """Rows per subtask and prompt type: columns subtask (paper code), prompt_type, rows."""
    recs = [{"subtask": get_subtask(name).code, "prompt_type": ptype, "rows": int(n)}
            for name, ds in datasets.items()
            for ptype, n in pd.Series(prompt_types(ds)).value_counts().sort_index().items()]
    return pd.DataFrame(recs, columns=["subtask", "prompt_type", "rows"])


def response_sources(datasets: dict) -> pd.DataFrame:
    """Which models produced the responses (Table 9's "models" column): subtask, source, responses."""
    recs = []
    for name, ds in datasets.items():
        st = get_subtask(name)
        cols = [c for c in st.source_columns if c in ds.column_names]
        sources = pd.Series([s for c in cols for s in ds[c] if s])
        for source, n in sources.value_counts().sort_index().items():
            recs.append({"subtask": st.code, "source": source, "responses": int(n)})
    return pd.DataFrame(recs, columns=["subtask", "source", "responses"])


def prompt_map(datasets: dict, per_subtask: int = 150, seed: int = 0, encoder=None) -> pd.DataFrame:
    """A 2-D PCA map of prompt embeddings (all-MiniLM-L6-v2): subtask, prompt_type, prompt, x, y."""
    from aa_lib.embed import embed_texts, project_2d

    rng = np.random.default_rng(seed)
    recs = []
    for name, ds in datasets.items():
        st = get_subtask(name)
        idx = np.sort(rng.choice(len(ds), size=min(per_subtask, len(ds)), replace=False))
        sub = ds.select(idx)
        recs += [{"subtask": st.code, "prompt_type": t, "prompt": p}
                 for p, t in zip(sub[st.prompt_column], prompt_types(sub))]
    df = pd.DataFrame(recs)
    xy = project_2d(embed_texts(df["prompt"].tolist(), encoder=encoder))
    df["x"], df["y"] = xy[:, 0].round(5), xy[:, 1].round(5)
    return df
