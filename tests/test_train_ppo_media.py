"""PPO with video (Qwen2-VL, TV2T) and audio (Qwen2-Audio, TA2T) prompts: two optimizer steps, every trainable
parameter of policy and critic moves, and the media reach the critic (other media, other values)."""
import numpy as np
import pytest
import torch

from aa_lib.models import build_tiny, load_model
from tests.test_train_rl import CORPUS, PAIRS, snapshot, unchanged


def video(seed):
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    for t in range(4):  # a square that moves right
        frames[t, 10:20, 4 + 4 * t + seed:14 + 4 * t + seed] = (200, 40 * seed, 40)
    return frames


def audio(seed):
    t = np.arange(8000) / 16000
    return (0.4 * np.sin(2 * np.pi * (220 * (seed + 1)) * t)).astype(np.float32)


CASES = {"qwen2_vl": ("tv2t", "video", "videos", video), "qwen2_audio": ("ta2t", "audio", "audios", audio)}


@pytest.mark.parametrize("family", list(CASES))
def test_ppo_media_reach_every_model(family, tmp_path):
    from aa_lib.presets import make_config
    from aa_lib.train.ppo import PPOTrainer, _score, build_score_model

    subtask, kind, key, make = CASES[family]
    path = build_tiny(family, tmp_path / family, CORPUS, seed=0)
    data = [{"prompt": [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": q}]}], key: [make(i)]}
            for i, (q, _, _) in enumerate(PAIRS)]
    args = make_config("ppo", subtask, tmp_path / "out", profile="tiny", use_cpu=True, response_length=6,
                       local_rollout_forward_batch_size=2, seed=0)
    policy, processor = load_model(path)
    ref, _ = load_model(path)
    value, reward = build_score_model(path, seed=0), build_score_model(path, seed=1)
    trainer = PPOTrainer(args=args, processing_class=processor, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=data, value_model=value)
    before = snapshot(policy, value)
    trainer.train()
    assert trainer.state.global_step == 2
    assert unchanged(before, policy, value) == []
    batch = trainer.data_collator(data[:2])
    media = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
    feature = next(k for k in media if k in ("pixel_values_videos", "input_features"))
    other = {**media, feature: media[feature].flip(0)}
    with torch.no_grad():
        v1 = _score(value, batch["input_ids"], batch["attention_mask"], media)
        v2 = _score(value, batch["input_ids"], batch["attention_mask"], other)
    assert not torch.allclose(v1, v2)
