"""Learning from language feedback (LLF, paper Sec. 3.2 / Appx. 10.1, SPEC §3): feedback modeling, self-improving,
preference synthesis; DPO+LLF and PPO+LLF train aa_lib's DPO trainer, or a reward model then PPO, on the pairs
(`aa_lib.experiments` composes them).

1. `train_feedback_model`: SFT of a feedback model on (x, y) -> c, loss on the critique tokens only
   (conversation: user x; assistant y; user "Please provide a critique of the response."; assistant c).
2. `self_improve`: y ~ policy(x); c = feedback_model(x, y); y* = policy(x, y, c) with the upstream refinement
   prompt (`REFINE_TEMPLATE`). `feedback_model=None` uses the policy itself (Table 3 "w/o feedback model").
3. `synthesize_preferences`: pairs (chosen y*, rejected y), filtered (identical, empty, over length), sized to a
   target by oversampling prompts, written to an append-only JSONL shard as it goes so that an interrupted run
   resumes without redoing finished items; the result is a `datasets.Dataset` in `aa_lib.data.to_preference`'s
   format, saved to disk.
4. `win_rate`: Table 3's metric, the share of prompts whose self-improved response wins (ties count half).

Every stage generates with `generate` (aa_lib.llf.generation), whose sampling is seeded per row from (seed, the row's
key): batched and one-at-a-time generation agree, and a resumed synthesis reproduces the uninterrupted one.
"""
from aa_lib.llf.feedback import (REFINE_TEMPLATE, build_feedback_trainer, critique_example, critiques,
                                 feedback_sft_examples, is_critic, refine_example, self_improve, train_feedback_model,
                                 win_rate)
from aa_lib.llf.generation import (MEDIA_COLUMNS, Generation, GenerationOptions, example_key, generate,
                                   generate_detailed)
from aa_lib.llf.synthesis import (SynthesisConfig, item_id, load_synthesized, normalize_ws, pair_filter,
                                  synthesize_preferences, to_reward_pairs)

__all__ = [
    "REFINE_TEMPLATE", "GenerationOptions", "Generation", "generate", "generate_detailed", "example_key",
    "critique_example", "critiques", "is_critic", "refine_example", "train_feedback_model", "build_feedback_trainer",
    "feedback_sft_examples", "self_improve", "SynthesisConfig", "synthesize_preferences", "pair_filter", "item_id",
    "load_synthesized", "to_reward_pairs", "normalize_ws", "win_rate", "MEDIA_COLUMNS",
]
