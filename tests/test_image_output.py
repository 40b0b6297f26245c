"""Image-output training (t2i / ti2ti) on tiny Janus and Chameleon with real mini rows: two optimizer steps change
every trainable parameter, the frozen VQ encoder and the DPO/PPO reference stay put, generation is seeded and
batch-size independent, and a short SFT lowers the code loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aa_lib import data, mini
from aa_lib.collators import CollatorError
from aa_lib.models import build_tiny, load_model
from aa_lib.train.image_output import (ImageDPOConfig, ImageOutputCollator, ImagePPOConfig, ImageSFTConfig,
                                       generation_batch, prompt_example, build_image_dpo_trainer,
                                       build_image_sft_trainer, generate_images, janus_code_logps, response_logps,
                                       train_image_ppo, train_image_tokenizer)

# Parameters that legitimately get no gradient:
# - T2I prompts hold no input image, so Janus's understanding path (vision_model, aligner) is unused.
T2I_UNUSED = ("model.vision_model.", "model.aligner.")
VQ = "model.vqmodel."  # always frozen: argmax quantisation passes no gradient


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    return {st: mini.dataset(st, 6, root=root) for st in ("t2i", "ti2ti")}


@pytest.fixture(scope="module")
def models(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("image_models")
    corpus = []
    for ds in rows.values():
        corpus += [str(v) for r in ds for k, v in r.items() if isinstance(v, str) and k != "mini_meta"]
    return {f: build_tiny(f, root / f, corpus, seed=0) for f in ("janus", "chameleon")}


def _cfg(cls, tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                disable_tqdm=True, lr_scheduler_type="constant")
    return cls(**{**base, **kw})


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_trained(model, before, skip=()):
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(skip)
                 and torch.equal(p.detach(), before[n])]
    assert not unchanged, f"trainable parameters unchanged after 2 steps: {unchanged}"
    vq = [n for n, p in model.named_parameters() if n.startswith(VQ) and not torch.equal(p.detach(), before[n])]
    assert not vq, f"the frozen VQ model changed: {vq}"


def test_janus_ti2ti_sft_trains_every_parameter(models, rows, tmp_path):
    ds = data.to_sft(rows["ti2ti"])
    tr = build_image_sft_trainer(_cfg(ImageSFTConfig, tmp_path), models["janus"], ds)
    batch = tr.data_collator([ds[0], ds[1]])
    assert batch["image_target_mask"].sum() == 2 * 16  # one 4x4 code grid per target image
    assert len(batch["pixel_values"]) == 4  # per row: the input image, then the target image
    before = _snapshot(tr.model)
    tr.train()
    _assert_trained(tr.model, before)


def test_janus_t2i_sft_lowers_code_loss(models, rows, tmp_path):
    ds = data.to_sft(rows["t2i"]).select(range(4))
    tr = build_image_sft_trainer(_cfg(ImageSFTConfig, tmp_path, max_steps=12, per_device_train_batch_size=4,
                                      learning_rate=3e-3), models["janus"], ds)
    batch = tr.data_collator(list(ds))

    def code_loss():
        with torch.no_grad():
            lp, _, img = response_logps(tr.model, batch)
        return float(-(lp * img).sum() / img.sum())

    first = code_loss()
    before = _snapshot(tr.model)
    tr.train()
    assert code_loss() < first - 0.5, (first, code_loss())
    _assert_trained(tr.model, before, skip=T2I_UNUSED)


@pytest.mark.parametrize("family,subtask", [("janus", "t2i"), ("chameleon", "ti2ti")])
def test_image_dpo_two_steps(models, rows, tmp_path, family, subtask):
    ds = data.to_preference(rows[subtask])
    tr = build_image_dpo_trainer(_cfg(ImageDPOConfig, tmp_path), models[family], ds)
    before, ref_before = _snapshot(tr.model), _snapshot(tr.ref_model)
    batch = tr.data_collator([ds[0], ds[1]])
    with torch.no_grad():
        loss = tr.compute_loss(tr.model, batch)
    assert abs(float(loss) - np.log(2)) < 1e-4  # policy == reference at the start: -logsigmoid(0)
    tr.train()
    _assert_trained(tr.model, before, skip=T2I_UNUSED if subtask == "t2i" else ())
    assert all(torch.equal(p, ref_before[n]) for n, p in tr.ref_model.named_parameters()), "reference changed"


def test_chameleon_image_logps_use_image_rows(models, rows):
    """Chameleon's own forward masks image logits; ours scores codes over the image rows, text over the rest."""
    model, proc = load_model(models["chameleon"])
    batch = ImageOutputCollator(proc, "chameleon")([data.to_sft(rows["ti2ti"])[0]])
    with torch.no_grad():
        lp, mask, img = response_logps(model, batch)
    assert torch.isfinite(lp[mask]).all() and img.sum() == 16
    assert (lp[img] > -np.log(64) - 3).all()  # near-uniform over the 64 codes of a random model, not -inf


def test_generate_images_seeded_and_batched(models, rows):
    model, proc = load_model(models["janus"])
    prompts = [r["prompt"] for r in rows["t2i"]][:3]
    a = generate_images(model, proc, prompts, seed=0, batch_size=2)
    b = generate_images(model, proc, prompts, seed=0, batch_size=3)
    c = generate_images(model, proc, prompts, seed=1, batch_size=3)
    assert len(a) == 3 and all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "images depend on batch_size"
    assert not all(np.array_equal(x, y) for x, y in zip(a, c)), "seed has no effect"
    # Greedy sampling picks the argmax of the teacher-forced code distribution at every step.
    greedy, codes = generate_images(model, proc, prompts, temperature=0, return_codes=True)
    guided = generate_images(model, proc, prompts, temperature=0, cfg_weight=3.0)
    assert not all(np.array_equal(x, y) for x, y in zip(greedy, guided))
    batch = generation_batch(model, proc, [prompt_example(p, i) for i, p in enumerate(prompts)])
    with torch.no_grad():
        lp = janus_code_logps(model, batch, codes)
        alt = janus_code_logps(model, batch, (codes + 1) % 64)
    assert (lp >= alt - 1e-5).all()
    # TI2TI: the input image goes through the understanding path and changes the result.
    ex = data.to_sft(rows["ti2ti"])[0]
    p1 = {"prompt": ex["prompt"], "images": ex["images"][:1], "completion": ex["completion"]}
    p2 = {**p1, "images": [np.zeros((32, 32, 3), np.uint8)]}
    _, c1 = generate_images(model, proc, [p1], temperature=0, return_codes=True)
    b1, b2 = (generation_batch(model, proc, [prompt_example(p, 0)]) for p in (p1, p2))
    with torch.no_grad():
        assert not torch.allclose(janus_code_logps(model, b1, c1), janus_code_logps(model, b2, c1))


def test_image_ppo_two_rounds(models, rows, tmp_path):
    prompts = [{"prompt": r["prompt"], "mini_meta": r["mini_meta"]} for r in rows["t2i"]]
    before = _snapshot(load_model(models["janus"])[0])
    seen = []
    cfg = ImagePPOConfig(output_dir=str(tmp_path / "ppo"), num_iterations=2, prompts_per_iteration=2,
                         samples_per_prompt=2, ppo_epochs=1, learning_rate=1e-3)
    out = train_image_ppo(cfg, models["janus"], prompts, log=seen.append)
    assert len(seen) == 2 and len(json.loads((out / "aa_image_ppo.json").read_text())) == 2
    after, _ = load_model(out)
    trainable = [n for n, _ in after.named_parameters() if not n.startswith((VQ, *T2I_UNUSED))]
    # generation_embeddings rows of codes never sampled keep their values; the tensor as a whole changes.
    unchanged = [n for n in trainable if torch.equal(dict(after.named_parameters())[n], before[n])]
    assert not unchanged, unchanged
    assert all(torch.equal(p, before[n]) for n, p in after.named_parameters() if n.startswith(VQ))


def test_image_tokenizer_fits_images(models, rows, tmp_path):
    imgs = [r["image_1"] for r in rows["t2i"]]
    out = train_image_tokenizer(models["janus"], imgs, tmp_path / "vq", steps=12, batch_size=4, lr=3e-3)
    meta = json.loads((out / "aa_image_tokenizer.json").read_text())
    assert meta["last_loss"] < meta["first_loss"]
    model, _ = load_model(out)
    norms = model.model.vqmodel.quantize.embedding.weight.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # encode and decode agree on codes


def test_bad_rows_name_the_row(models, rows):
    _, proc = load_model(models["janus"])
    ex = dict(data.to_preference(rows["t2i"])[0], aa_row=7)
    del ex["rejected_images"]
    with pytest.raises(CollatorError, match="aa_row=7.*rejected_images"):
        ImageOutputCollator(proc, "janus", pairs=True)([ex])
    sft = dict(data.to_sft(rows["ti2ti"])[0], aa_row=3, images=[])
    with pytest.raises(CollatorError, match="aa_row=3"):
        ImageOutputCollator(proc, "janus")([sft])
