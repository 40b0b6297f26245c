"""aa_lib.image_policy: canonical T2I / TI2TI targets score full marks and read back as their truth; the shared VQ
cache is fitted once when two processes ask at the same time; a seed's start model carries the fitted VQ and its own
language model, and generates t2i images and ti2ti text + image, seeded (training: tests/test_image_cells.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aa_lib import mini
from aa_lib.image_policy import (canonical_image, canonical_images, canonical_target, generate_responses, sft_rows,
                                 start_model, vq_tokenizer)
from aa_lib.media import load_image
from aa_lib.mini import checker
from aa_lib.models import load_model
from aa_lib.train.image_output import generate_images


def test_canonical_targets_score_full_marks_and_read_as_their_truth():
    prompts = mini.heldout_prompts("t2i", 24, seed=3)
    for row in prompts:
        meta = json.loads(row["mini_meta"])
        image = canonical_image(meta["truth"], meta["unsafe"])
        score = mini.rubric_score(row, image, "t2i")
        assert score["overall"] == 27.0, (meta["prompt"], score["critique"])
        reading = checker.read_image(image)
        if meta["unsafe"]:
            assert reading["blank"], meta["prompt"]
        else:
            assert {a: reading[a] for a in ("color", "shape", "position", "count")} == {
                a: meta["truth"][a] for a in ("color", "shape", "position", "count")}, meta["prompt"]
    images = canonical_images()
    assert len(images) == 4 * 3 * 4 * 3 + 1
    assert len({im.tobytes() for im in images}) == len(images)  # every (colour, shape, position, count) differs


def test_sft_rows_pair_prompts_with_their_canonical_image():
    rows = sft_rows("t2i", 5, seed=1)
    again = sft_rows("t2i", 5, seed=1)  # seeded: same prompts and images
    assert all(a["prompt"] == b["prompt"] and a["completion_images"] == b["completion_images"]
               for a, b in zip(rows, again))
    assert [r["prompt"] for r in sft_rows("t2i", 5, seed=2)] != [r["prompt"] for r in rows]
    for r in rows:
        assert np.asarray(load_image(r["completion_images"][0])).shape == (32, 32, 3)
        assert r["prompt"].startswith("draw ")
    with pytest.raises(ValueError, match="t2v"):
        sft_rows("t2v", 2)


def test_ti2ti_canonical_targets_score_full_marks_and_are_in_the_tokenizer_set():
    known = {im.tobytes() for im in canonical_images()}
    for row in mini.heldout_prompts("ti2ti", 40, seed=3):
        meta = json.loads(row["mini_meta"])
        text, image = canonical_target(meta)
        score = mini.rubric_score(row, {"text": text, "image": image}, "ti2ti")
        assert "keep the response as it is" in score["critique"], (meta["prompt"], score["critique"])
        assert image.tobytes() in known, meta["prompt"]  # the shared VQ was fitted on every ti2ti target
    rows = sft_rows("ti2ti", 6, seed=1)
    for r in rows:
        (msg,) = r["prompt"]
        assert [p["type"] for p in msg["content"]] == ["image", "text"] and len(r["images"]) == 1
        assert np.asarray(load_image(r["images"][0])).shape == (32, 32, 3)
        assert [p["type"] for p in r["completion"][0]["content"]] == ["text", "image"]
        assert r["completion"][0]["content"][0]["text"].split()[0] in ("here", "sorry")
    assert [r["completion_images"] for r in rows] == [r["completion_images"] for r in sft_rows("ti2ti", 6, seed=1)]


_FIT = ("import sys; from aa_lib.image_policy import vq_tokenizer; "
        "print(vq_tokenizer(sys.argv[1], {'name': 'smoke', 'tokenizer_steps': 40}))")


def test_vq_cache_is_fitted_once_when_two_processes_ask_at_once(smoke_policy, tmp_path):
    root, _, _ = smoke_policy
    cache = tmp_path / "cache"
    cache.mkdir()
    base = next((root / "cache").glob("janus-base-*"))  # skip the base build: both processes go straight to the fit
    subprocess.run(["cp", "-r", str(base), str(cache / base.name)], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _FIT, str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1 and Path(paths.pop()).name.startswith("janus-vq-")
    fits = (cache / "fits.log").read_text().splitlines()
    assert len(fits) == 1, fits  # the second process waited on the lock and reused the first one's fit
    assert not [p for p in cache.iterdir() if p.name.startswith(".janus-vq") and p.is_dir()], "a temp folder is left"


@pytest.fixture(scope="module")
def smoke_policy(tmp_path_factory):
    """(root, seed-0 start model: the fitted VQ itself, seed-1 start model), smoke budget."""
    root = tmp_path_factory.mktemp("image_policy")
    return root, start_model(0, root / "cache", "smoke"), start_model(1, root / "cache", "smoke")


def test_vq_fit_changes_only_the_vq_and_the_start_model_generates(smoke_policy):
    root, path, _ = smoke_policy
    assert path == vq_tokenizer(root / "cache", "smoke")  # seed VQ_SEED starts from the fitted folder itself
    fitted, processor = load_model(path, family="janus")
    raw, _ = load_model(next((root / "cache").glob("janus-base-*")), family="janus")
    p = dict(fitted.named_parameters())
    changed = [n for n, q in raw.named_parameters() if not torch.equal(q, p[n])]
    assert changed and all(n.startswith("model.vqmodel") for n in changed), changed
    prompts = [r["prompt"] for r in mini.heldout_prompts("t2i", 2, seed=5)]
    images = generate_images(fitted, processor, prompts, seed=0, temperature=0.0)
    assert len(images) == 2 and all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)


def test_a_seeds_start_model_has_its_own_language_model_and_the_shared_vq(smoke_policy):
    root, seed0_path, start = smoke_policy
    assert start != seed0_path
    seed0, _ = load_model(seed0_path, family="janus")
    before, _ = load_model(start, family="janus")
    p0 = dict(seed0.named_parameters())
    differ = {n for n, p in before.named_parameters() if not torch.equal(p, p0[n])}
    assert "model.aligner.fc1.weight" in differ and not any(n.startswith("model.vqmodel") for n in differ), differ


def test_ti2ti_generation_returns_text_and_image_and_is_seeded(smoke_policy):
    _, _, path = smoke_policy
    model, processor = load_model(path, family="janus")
    held = mini.heldout_prompts("ti2ti", 3, seed=5)
    kw = dict(temperature=1.0, max_new_tokens=5)
    a = generate_responses(model, processor, held, seed=0, batch_size=2, **kw)
    b = generate_responses(model, processor, held, seed=0, batch_size=3, **kw)
    c = generate_responses(model, processor, held, seed=1, batch_size=3, **kw)
    assert len(a) == 3 and all(isinstance(r["text"], str) and r["image"].shape == (32, 32, 3)
                               and r["image"].dtype == np.uint8 for r in a)
    assert all(x["text"] == y["text"] and np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert [(x["text"], x["image"].tobytes()) for x in a] != [(x["text"], x["image"].tobytes()) for x in c]
    for row, r in zip(held, a):
        assert 0.0 <= mini.rubric_score(row, r, "ti2ti")["overall"]
    t2i = generate_responses(model, processor, mini.heldout_prompts("t2i", 2, seed=5), seed=0)
    assert len(t2i) == 2 and all(im.shape == (32, 32, 3) for im in t2i)
