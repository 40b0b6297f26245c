"""Launched by tests/test_multiprocess.py under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU):
two DPO steps on a tiny llama from the tiny DPO preset; each rank writes what it saw to <out>/rank<i>.json."""
import json
import sys
from pathlib import Path

import torch

from aa_lib.presets import make_config
from aa_lib.train.dpo import build_dpo_trainer


def msg(role, text):
    return [{"role": role, "content": [{"type": "text", "text": text}]}]


def main(model_path: str, out: str):
    pairs = [("what color is the cube", "the answer is red", "a dog barks loudly"),
             ("describe the picture", "the red cube is on the left", "blue"),
             ("what color is the ball", "the answer is blue", "a red cube"),
             ("describe the sound", "a dog barks loudly", "the cube")] * 2
    data = [{"prompt": msg("user", q), "chosen": msg("assistant", c), "rejected": msg("assistant", r)}
            for q, c, r in pairs]
    cfg = make_config("dpo", "t2t", Path(out) / "run", profile="tiny", max_steps=2, use_cpu=True, max_length=64,
                      learning_rate=1e-3, seed=0)
    trainer = build_dpo_trainer(cfg, model_path, data)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    acc = trainer.accelerator
    after = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    checksum = float(sum(p.detach().double().sum() for p in after.values()))
    Path(out, f"rank{acc.process_index}.json").write_text(json.dumps({
        "rank": acc.process_index, "world_size": acc.num_processes, "backend": str(acc.state.backend),
        "steps": trainer.state.global_step, "changed": len(changed), "total": len(before), "checksum": checksum}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
