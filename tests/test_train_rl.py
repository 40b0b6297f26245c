"""PPO (text and LLaVA images), GRPO / RLOO and KTO / SimPO / ORPO: two optimizer steps each on tiny models, and
every trainable parameter moves. PPO runs from the tiny presets (`aa_lib.presets.make_config`)."""
import numpy as np
import pytest
import torch
from PIL import Image

from aa_lib.models import build_tiny, load_model

CORPUS = ["the red cube is on the left", "a blue ball rolls", "describe the picture", "what color is the cube",
          "the answer is red", "the answer is blue", "a dog barks loudly"] * 3


def msg(role, text, image=False):
    return [{"role": role, "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}]


PAIRS = [("what color is the cube", "the answer is red", "a dog barks loudly"),
         ("describe the picture", "the red cube is on the left", "blue"),
         ("what color is the ball", "the answer is blue", "a red cube"),
         ("describe the sound", "a dog barks loudly", "the cube")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    return {fam: build_tiny(fam, root / fam, CORPUS, seed=0) for fam in ("llama", "llava")}


def image(seed):
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8"))


def snapshot(*modules):
    return [{n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad} for m in modules]


def unchanged(before, *modules):
    return [n for snap, m in zip(before, modules) for n, p in m.named_parameters()
            if n in snap and torch.equal(snap[n], p.detach())]


# ------------------------------------------------------------------------------------------------ PPO
def ppo_trainer(path, dataset, tmp_path, reward=None):
    from aa_lib.presets import make_config
    from aa_lib.train.ppo import PPOTrainer, build_score_model

    family = "llava" if "llava" in str(path) else "llama"
    args = make_config("ppo", "ti2t" if family == "llava" else "t2t", tmp_path, profile="tiny", use_cpu=True,
                       response_length=6, local_rollout_forward_batch_size=2, seed=0)
    policy, processor = load_model(path)
    ref, _ = load_model(path)
    value = build_score_model(path, seed=0)
    reward = reward if reward is not None else build_score_model(path, seed=1)
    trainer = PPOTrainer(args=args, processing_class=processor, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value)
    return trainer, policy, value


def test_ppo_text_separate_critic_schedule(models, tmp_path):
    from aa_lib.presets import get_preset

    data = [{"prompt": msg("user", q)} for q, _, _ in PAIRS]
    trainer, policy, value = ppo_trainer(models["llama"], data, tmp_path)
    before = snapshot(policy, value)
    trainer.train()  # TRL's own loop (text)
    assert trainer.state.global_step == 2
    assert unchanged(before, policy, value) == []
    # Table 8: actor cosine, critic constant at its own rate; after the last step the actor has decayed.
    preset = get_preset("ppo", "t2t", "tiny")
    lrs = {g["role"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["critic"] == pytest.approx(preset.critic_learning_rate)
    assert lrs["actor"] < preset.learning_rate * 0.5
    assert preset.critic_learning_rate != preset.learning_rate


def test_ppo_llava_images_reach_every_model(models, tmp_path):
    from aa_lib.train.ppo import _score
    from aa_lib.train.reward import RewardModel

    data = [{"prompt": msg("user", q, image=True), "images": [image(i)]} for i, (q, _, _) in enumerate(PAIRS)]
    rm_backbone, _ = load_model(models["llava"])
    torch.manual_seed(1)
    reward = RewardModel(rm_backbone, "llava").eval()  # aa_lib's multimodal reward model
    trainer, policy, value = ppo_trainer(models["llava"], data, tmp_path, reward=reward)
    before = snapshot(policy, value)
    trainer.train()  # aa_lib's media loop
    assert trainer.state.global_step == 2
    # LLaVA reads the tower's last hidden layer *before* CLIP's post_layernorm, which thus never gets a gradient.
    left = [n for n in unchanged(before, policy, value) if "post_layernorm" not in n]
    assert left == []
    # The critic sees the image: same tokens, other pixels, other values.
    batch = trainer.data_collator(data[:2])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        v1 = _score(value, ids, mask, {"pixel_values": batch["pixel_values"]})
        v2 = _score(value, ids, mask, {"pixel_values": batch["pixel_values"].flip(0)})
    assert not torch.allclose(v1, v2)


def test_select_rows_of_flattened_qwen2_vl_media():
    from aa_lib.train.ppo import _select

    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 1, 2]])  # 4, 8 and 2 patches
    pixels = torch.arange(14).unsqueeze(1).float()
    out = _select({"pixel_values": pixels, "image_grid_thw": grid, "input_ids": torch.arange(3)}, [2, 0])
    assert out["pixel_values"].squeeze(1).tolist() == [12, 13, 0, 1, 2, 3]
    assert out["image_grid_thw"].tolist() == [[1, 1, 2], [1, 2, 2]]
    assert out["input_ids"].tolist() == [2, 0]


# ------------------------------------------------------------------------------------------------ GRPO / RLOO
COMMON = dict(per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3, use_cpu=True)


def run_steps(trainer):
    model = trainer.model
    before = snapshot(model)
    trainer.train()
    assert trainer.state.global_step == 2
    assert unchanged(before, model) == []


def length_reward(completions, **kwargs):
    """Longer answers score higher: differs within a group, so advantages are non-zero."""
    return [float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def test_grpo_with_reward_function(models, tmp_path):
    from aa_lib.train.online import GRPOConfig, build_grpo_trainer

    data = [{"prompt": msg("user", q)} for q, _, _ in PAIRS]
    cfg = GRPOConfig(output_dir=str(tmp_path), max_completion_length=8, **COMMON)
    run_steps(build_grpo_trainer(cfg, models["llama"], data, length_reward))


def test_rloo_with_reward_model(models, tmp_path):
    from aa_lib.train.online import RLOOConfig, build_rloo_trainer
    from aa_lib.train.ppo import build_score_model

    data = [{"prompt": msg("user", q)} for q, _, _ in PAIRS]
    cfg = RLOOConfig(output_dir=str(tmp_path), max_completion_length=8, **COMMON)
    run_steps(build_rloo_trainer(cfg, models["llama"], data, build_score_model(models["llama"], seed=1)))


# ------------------------------------------------------------------------------------------------ KTO / SimPO / ORPO
@pytest.mark.parametrize("method", ["kto", "simpo", "orpo"])
def test_offline_preference_methods(models, tmp_path, method):
    from aa_lib.train import offline

    data = [{"prompt": msg("user", q), "chosen": msg("assistant", c), "rejected": msg("assistant", r)}
            for q, c, r in PAIRS]
    cfg_cls, build = {"kto": (offline.KTOConfig, offline.build_kto_trainer),
                      "simpo": (offline.SimPOConfig, offline.build_simpo_trainer),
                      "orpo": (offline.ORPOConfig, offline.build_orpo_trainer)}[method]
    cfg = cfg_cls(output_dir=str(tmp_path), max_length=64, **COMMON)
    if method == "simpo":
        assert cfg.loss_type == "simpo" and cfg.cpo_alpha == 0.0
    run_steps(build(cfg, models["llama"], data))


def test_text_only_methods_refuse_media_models(models, tmp_path):
    from aa_lib.train import offline

    with pytest.raises(ValueError, match="text families"):
        offline.build_orpo_trainer(offline.ORPOConfig(output_dir=str(tmp_path), use_cpu=True), models["llava"], [])
