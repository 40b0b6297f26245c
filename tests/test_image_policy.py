"""aa_lib.image_policy: canonical T2I targets read back as their truth, and prepare_t2i_policy runs end to end at
smoke size (tokenizer fit, SFT, evaluation), changes the policy, and saves a folder that reloads and generates."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aa_lib import mini
from aa_lib.image_policy import canonical_image, canonical_images, prepare_t2i_policy, sft_rows
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
    with pytest.raises(NotImplementedError, match="ti2ti"):
        sft_rows("ti2ti", 2)


@pytest.fixture(scope="module")
def smoke_policy(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_policy")
    path, report = prepare_t2i_policy(root / "policy", seed=0, budget="smoke", cache_dir=root / "cache")
    return root, path, report


def test_prepare_t2i_policy_reports_scores_before_and_after(smoke_policy):
    _, _, report = smoke_policy
    assert {"budget", "untrained", "reconstruction", "sft", "timing", "code_loss"} <= set(report)
    for key in ("untrained", "reconstruction", "sft"):
        scores = report[key]
        assert {"overall", "prompt_following", "objective_rules", "aesthetics", "information_richness",
                "safety"} <= set(scores)
        assert 0.0 <= scores["overall"] <= 27.0
    assert report["timing"]["sft_steps"] == 2
    assert report["code_loss"]["first"] > 0


def test_prepared_policy_reloads_generates_and_differs_from_its_start(smoke_policy):
    root, path, _ = smoke_policy
    model, processor = load_model(path, family="janus")
    prompts = [r["prompt"] for r in mini.heldout_prompts("t2i", 2, seed=5)]
    images = generate_images(model, processor, prompts, seed=0, temperature=0.0)
    assert len(images) == 2 and all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    start = next((root / "cache").glob("janus-vq-*"))
    before, _ = load_model(start, family="janus")
    after = dict(model.named_parameters())
    changed = [n for n, p in before.named_parameters() if not torch.equal(p, after[n])]
    assert any(n.startswith("model.generation_head") for n in changed), changed
    assert not any(n.startswith("model.vqmodel") for n in changed), "the SFT must not touch the VQ tokenizer"
    vq_before = dict(before.named_parameters())
    base = next((root / "cache").glob("janus-base-*"))
    raw, _ = load_model(base, family="janus")
    fitted = [n for n, p in raw.named_parameters()
              if n.startswith("model.vqmodel") and not torch.equal(p, vq_before[n])]
    assert fitted, "the tokenizer fit changed no VQ weight"
