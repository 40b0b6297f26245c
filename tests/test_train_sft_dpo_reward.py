"""SFT, DPO and reward-model trainers on tiny models: two optimizer steps change every trainable parameter,
frozen towers stay put, LoRA changes adapters only, and the saved folders load back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aa_lib import media
from aa_lib.models import build_tiny, get_family, load_model
from aa_lib.train.dpo import DPOConfig, build_dpo_trainer
from aa_lib.train.reward import RewardConfig, RewardModel, build_reward_trainer, load_reward_model, score, train_reward
from aa_lib.train.sft import SFTConfig, build_sft_trainer, train_sft
from aa_lib.collators import PairCollator

CORPUS = ["the red cat sits on the mat", "a blue dog runs in the park", "what is in the image",
          "describe the video", "what do you hear", "a sine tone is playing"] * 3
MEDIA_KEY = {"image": "images", "audio": "audios", "video": "videos"}
# subtask -> (family, prompt modality)
CASES = {"t2t": ("llama", None), "ti2t-llava": ("llava", "image"), "ti2t-qwen2_vl": ("qwen2_vl", "image"),
         "tv2t": ("qwen2_vl", "video"), "ta2t": ("qwen2_audio", "audio")}
# Parameters that legitimately get no gradient:
# - LLaVA reads the CLIP tower's last hidden state, which comes before the tower's post_layernorm.
NO_GRAD = {"llava": ("vision_tower.post_layernorm.",)}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_models")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_tiny(family, root / family, CORPUS, seed=0)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def media_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_media")
    rng = np.random.RandomState(1)
    img = Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))
    wav = media.write_bytes_atomic(root / "tone.wav", media.encode_wav(
        np.sin(np.arange(8000) / 16000 * 2 * np.pi * 330).astype(np.float32)))
    mp4 = media.write_bytes_atomic(root / "clip.mp4", media.encode_mp4((rng.rand(4, 32, 32, 3) * 255).astype(np.uint8)))
    return {"image": img, "audio": str(wav), "video": str(mp4)}


def _msg(role, text, kind=None):
    content = [{"type": "text", "text": text}]
    return [{"role": role, "content": ([{"type": kind}] if kind else []) + content}]


def examples(kind, media_files, style):
    """Two examples in the data.py shapes: sft (prompt/completion), dpo (prompt/chosen/rejected), reward (full convs)."""
    rows = []
    for q, good, bad in [("what is in the image", "a red cat", "a blue dog"),
                         ("what do you hear", "a sine tone is playing", "the dog runs")]:
        prompt = _msg("user", q, kind)
        ex = {MEDIA_KEY[kind]: [media_files[kind]]} if kind else {}
        if style == "sft":
            ex.update(prompt=prompt, completion=_msg("assistant", good))
        elif style == "dpo":
            ex.update(prompt=prompt, chosen=_msg("assistant", good), rejected=_msg("assistant", bad))
        else:
            ex.update(chosen=prompt + _msg("assistant", good), rejected=prompt + _msg("assistant", bad))
        rows.append(ex)
    return rows


def common(tmp_path, **kw):
    return {**dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                   max_length=96), **kw}


def train_and_diff(trainer):
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    params = dict(trainer.model.named_parameters())
    trainable = {k for k, v in params.items() if v.requires_grad}
    changed = {k for k, v in params.items() if not torch.equal(v.detach(), before[k])}
    return trainable, changed


def assert_all_trainable_changed(trainable, changed, family):
    skip = NO_GRAD.get(family, ())
    missing = sorted(k for k in trainable - changed if not any(s in k for s in skip))
    assert not missing, f"trainable parameters that did not change: {missing}"
    assert not changed - trainable, f"frozen parameters changed: {sorted(changed - trainable)}"


@pytest.mark.parametrize("case", list(CASES))
def test_sft_updates_every_trainable_parameter(models, media_files, tmp_path, case):
    family, kind = CASES[case]
    tr = build_sft_trainer(SFTConfig(**common(tmp_path)), models(family), examples(kind, media_files, "sft"))
    trainable, changed = train_and_diff(tr)
    assert_all_trainable_changed(trainable, changed, family)


@pytest.mark.parametrize("case", list(CASES))
def test_dpo_updates_every_trainable_parameter(models, media_files, tmp_path, case):
    family, kind = CASES[case]
    tr = build_dpo_trainer(DPOConfig(**common(tmp_path)), models(family), examples(kind, media_files, "dpo"))
    assert tr.beta == 0.1 and tr.loss_types == ["sigmoid"]
    trainable, changed = train_and_diff(tr)
    assert_all_trainable_changed(trainable, changed, family)
    assert not any(p.requires_grad for p in tr.ref_model.parameters())


@pytest.mark.parametrize("case", list(CASES))
def test_reward_updates_every_trainable_parameter(models, media_files, tmp_path, case):
    family, kind = CASES[case]
    tr = build_reward_trainer(RewardConfig(**common(tmp_path)), models(family), examples(kind, media_files, "reward"))
    trainable, changed = train_and_diff(tr)
    # RewardModel freezes the unused LM head; TRL's text reward model has none.
    assert all("lm_head" not in k for k in trainable)
    assert_all_trainable_changed(trainable, changed, family)


@pytest.mark.parametrize("family,kind,method", [("llava", "image", "dpo"), ("qwen2_audio", "audio", "sft")])
def test_frozen_tower_stays_unchanged(models, media_files, tmp_path, family, kind, method):
    cfg_cls, build = {"dpo": (DPOConfig, build_dpo_trainer), "sft": (SFTConfig, build_sft_trainer)}[method]
    cfg = cfg_cls(**common(tmp_path, freeze_tower=True, freeze_projector=(family == "qwen2_audio")))
    tr = build(cfg, models(family), examples(kind, media_files, method))
    trainable, changed = train_and_diff(tr)
    fam = get_family(family)
    frozen = fam.towers + (fam.projectors if cfg.freeze_projector else ())
    in_frozen = {k for k in dict(tr.model.named_parameters()) if any(k.startswith(m + ".") for m in frozen)}
    assert in_frozen and not in_frozen & trainable and not in_frozen & changed
    assert_all_trainable_changed(trainable, changed, family)


def test_lora_changes_adapters_only_and_saves_merged(models, media_files, tmp_path):
    cfg = SFTConfig(**common(tmp_path, lora_r=4, lora_alpha=8))
    tr = build_sft_trainer(cfg, models("qwen2_vl"), examples("video", media_files, "sft"))
    trainable, changed = train_and_diff(tr)
    assert trainable and all("lora_" in k for k in trainable)
    # LoRA B starts at zero, so after two steps both A and B have moved; nothing else has
    assert changed == trainable
    assert not any("visual" in k for k in trainable), "LoRA targets the language model only"
    from aa_lib.train.common import save_trained

    out = save_trained(tr.model, tr.processing_class, tmp_path / "merged", source_path=models("qwen2_vl"))
    merged, _ = load_model(out)
    base, _ = load_model(models("qwen2_vl"))
    diff = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert diff and all("language_model" in k and "_proj" in k for k in diff)


def test_train_entry_points_write_loadable_folders(models, media_files, tmp_path):
    out = train_sft(SFTConfig(**common(tmp_path / "sft")), models("llava"), examples("image", media_files, "sft"))
    model, proc = load_model(out)
    assert model.config.model_type == "llava"
    rows = examples("audio", media_files, "reward")
    rpath = train_reward(RewardConfig(**common(tmp_path / "rm")), models("qwen2_audio"), rows)
    rm, rproc = load_reward_model(rpath)
    assert isinstance(rm, RewardModel)
    batch = PairCollator(rproc, "qwen2_audio", max_length=96)(rows)
    with torch.no_grad():
        r = score(rm, batch)
    assert r.shape == (4,) and torch.isfinite(r).all()


def test_chameleon_t2i_sft_learns_image_tokens(models, media_files, tmp_path):
    """T2I on Chameleon: the loss is on the target image's VQ tokens (which Chameleon's own forward masks out)."""
    from aa_lib.collators import ImageOutputSFTCollator

    rows = [{"prompt": _msg("user", "draw a red cat"), "completion_images": [media_files["image"]]},
            {"prompt": _msg("user", "draw a blue dog"), "completion": _msg("assistant", "a blue dog"),
             "completion_images": [media_files["image"]]}]
    cfg = SFTConfig(**common(tmp_path, max_steps=4))
    tr = build_sft_trainer(cfg, models("chameleon"), rows)
    batch = tr.data_collator(rows)
    assert batch["image_target_mask"].sum() == 2 * 16  # 4x4 VQ grid per target image
    assert (batch["labels"][batch["image_target_mask"]] != -100).all()
    model = tr.model
    losses = [tr.compute_loss(model, batch).item()]
    trainable, changed = train_and_diff(tr)
    losses.append(tr.compute_loss(model, batch).item())
    assert losses[1] < losses[0], losses
    # The VQ model gets no gradient (argmax quantisation; codes are computed under no_grad).
    assert_all_trainable_changed(trainable - {k for k in trainable if "vqmodel" in k},
                                 changed, "chameleon")
    with pytest.raises(Exception, match="exceed max_length"):
        ImageOutputSFTCollator(tr.processing_class, "chameleon", max_length=10)(rows)
