"""DPO+LLF and PPO+LLF (SPEC §3.4): synthesis, then aa_lib's trainers; Table 3's win rate."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from aa_lib.llf.feedback import _prompt_dataset
from aa_lib.llf.synthesis import SynthesisConfig, synthesize_preferences, to_reward_pairs


# ---------------------------------------------------------------------------------------------------- pipelines
def dpo_llf(synthesis: SynthesisConfig, dpo_config, policy_path, prompts, feedback_model_path=None) -> Path:
    """DPO+LLF (SPEC §3.4): synthesize pairs with `policy_path` (+ its feedback model), then DPO from the policy.

    `dpo_config` is an `aa_lib.train.dpo.DPOConfig`; the trained policy goes to its output_dir. Rerunning after an
    interruption resumes the synthesis from its shard.
    """
    from aa_lib.train.dpo import train_dpo

    pairs = synthesize_preferences(synthesis, policy_path, prompts, feedback_model_path)
    return train_dpo(dpo_config, policy_path, pairs)


def train_llf_reward(synthesis: SynthesisConfig, reward_config, policy_path, prompts,
                     feedback_model_path=None) -> Path:
    """Synthesize pairs, then train a reward model (from the policy checkpoint) on them; returns its folder."""
    from aa_lib.train.reward import train_reward

    pairs = synthesize_preferences(synthesis, policy_path, prompts, feedback_model_path)
    return train_reward(reward_config, policy_path, to_reward_pairs(pairs))


def ppo_llf(synthesis: SynthesisConfig, reward_config, ppo_config, policy_path, prompts, feedback_model_path=None,
            ppo_prompts=None) -> Path:
    """PPO+LLF (SPEC §3.4): synthesized pairs -> reward model -> PPO from the policy on `ppo_prompts` (default: the
    synthesis prompts). `reward_config` / `ppo_config`: aa_lib.train.reward.RewardConfig / aa_lib.train.ppo.PPOConfig;
    the reward model goes to reward_config.output_dir, the policy to ppo_config.output_dir (returned)."""
    from aa_lib.train.ppo import train_ppo
    from aa_lib.train.reward import load_reward_model

    rm_path = train_llf_reward(synthesis, reward_config, policy_path, prompts, feedback_model_path)
    reward_model, _ = load_reward_model(rm_path)
    data = _prompt_dataset(ppo_prompts if ppo_prompts is not None else prompts, synthesis.subtask)
    return train_ppo(ppo_config, policy_path, reward_model, data)


def win_rate(judge: Callable[[int, str, str], int], responses: list[str], improved: list[str]) -> dict:
    """Table 3's metric: share of prompts where the self-improved response wins against the initial one.

    `judge(i, a, b)` returns 1 if `a` is better, 2 if `b` is better, 0 or "tie" for a tie (e.g. the mini world's
    `judge_pair` on prompt i); ties count half.
    """
    if len(responses) != len(improved):
        raise ValueError(f"win_rate: {len(responses)} initial vs {len(improved)} improved responses")
    wins = ties = 0
    for i, (y, s) in enumerate(zip(responses, improved)):
        v = judge(i, s, y)
        v = 0 if v == "tie" else v  # aa_lib.mini.judge_pair says "tie"
        if v not in (0, 1, 2):
            raise ValueError(f"win_rate: judge returned {v!r} for prompt {i} (expected 0, 1 or 2)")
        wins += v == 1
        ties += v == 0
    n = len(responses)
    return {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "win_rate": (wins + ties / 2) / max(n, 1)}
