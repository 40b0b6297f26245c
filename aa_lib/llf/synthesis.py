"""Preference synthesis (SPEC §3.3): (chosen y*, rejected y) pairs from self-improvement, filtered, sized to a target,
resumable from an append-only JSONL shard, saved in `aa_lib.data.to_preference`'s format."""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from aa_lib import progress
from aa_lib.llf.feedback import _as_model, _improve, _msg, _prompt_dataset
from aa_lib.media import write_folder_atomic, write_text_atomic
from aa_lib.llf.generation import GenerationOptions, _as_options, example_key


# ---------------------------------------------------------------------------------------------------- synthesis
@dataclass
class SynthesisConfig:
    """Preference synthesis (SPEC §3.3): pairs (chosen y*, rejected y) from self-improvement, filtered and sized."""

    output_dir: str = field(metadata={"help": "Folder of the shard (synthesis.jsonl), report.json and dataset/."})
    target_size: int | None = field(default=None, metadata={
        "help": "Pairs wanted (the size of the binary-feedback set); prompts are sampled again, up to max_rounds "
                "times each, until it is met. None: one pass over the prompts."})
    max_rounds: int = field(default=4, metadata={"help": "Cap on samples per prompt when oversampling."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch (and per shard write)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled responses (with each item's id)."})
    policy_generation: GenerationOptions = field(
        default_factory=lambda: GenerationOptions(do_sample=True, temperature=1.0),
        metadata={"help": "Decoding of the initial responses y (sampled: the online exploration)."})
    feedback_generation: GenerationOptions = field(
        default_factory=GenerationOptions, metadata={"help": "Decoding of the critiques c (greedy)."})
    refine_generation: GenerationOptions = field(
        default_factory=GenerationOptions, metadata={"help": "Decoding of the refinements y* (greedy)."})
    max_response_tokens: int | None = field(default=None, metadata={
        "help": "Drop pairs whose y or y* is longer than this many tokens (None: no limit)."})
    drop_truncated: bool = field(default=True, metadata={
        "help": "Drop pairs whose y, critique or y* was cut at max_new_tokens (never reached EOS): a cut critique "
                "may have lost the refinement it was about to name."})
    subtask: str | None = field(default=None, metadata={"help": "Subtask of an align-anything prompt Dataset."})

    def __post_init__(self):
        for name in ("policy_generation", "feedback_generation", "refine_generation"):
            setattr(self, name, _as_options(getattr(self, name)))
        if self.target_size is not None and self.target_size < 1:
            raise ValueError(f"target_size must be >= 1 or None, got {self.target_size}")
        if self.max_rounds < 1 or self.batch_size < 1:
            raise ValueError("max_rounds and batch_size must be >= 1")


SHARD = "synthesis.jsonl"
REPORT = "report.json"
DATASET = "dataset"
META = "synthesis_meta.json"


def normalize_ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def pair_filter(rec: dict, max_response_tokens: int | None, drop_truncated: bool = True) -> str | None:
    """Why a synthesized item is dropped (None: kept). Order: empty, over length (y, unfinished critique, y*),
    identical."""
    for side, name in (("y", "y"), ("y_star", "y*")):
        if not normalize_ws(rec[side]):
            return f"empty: {name}"
    for side, name in (("y", "y"), ("c", "c"), ("y_star", "y*")):
        if side == "c":  # a cut critique may have lost the fix it was about to name
            if drop_truncated and not rec.get("c_finished", True):
                return "over_length: c cut at critique_tokens"
            continue
        if drop_truncated and not rec[f"{side}_finished"]:
            return f"over_length: {name} cut at max_new_tokens ({rec[f'{side}_tokens']} tokens)"
        if max_response_tokens is not None and rec[f"{side}_tokens"] > max_response_tokens:
            return f"over_length: {name} has {rec[f'{side}_tokens']} tokens > {max_response_tokens}"
    if normalize_ws(rec["y"]) == normalize_ws(rec["y_star"]):
        return "identical: y* equals y"
    return None


def read_shard(path: Path) -> dict[str, dict]:
    """Finished items of a shard by id. A torn last line (a crash mid-write) is cut off; any other bad line raises."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good_end = 0
    lines = raw.split(b"\n")
    for n, line in enumerate(lines):
        last = n == len(lines) - 1
        if not line.strip():
            good_end += len(line) + (0 if last else 1)
            continue
        try:
            rec = json.loads(line)
            if last:
                raise ValueError("no newline: torn write")
        except ValueError as e:
            if last:
                break  # truncated below
            raise ValueError(f"{path}: line {n + 1} is not a JSON record ({e}); the shard is damaged") from None
        done[rec["id"]] = rec
        good_end += len(line) + 1
    if good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def append_records(path: Path, records: list[dict]) -> None:
    with open(path, "ab") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records).encode())
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def check_meta(out: Path, meta: dict) -> None:
    """A shard only resumes under the same settings (mixing two policies' items would be silent corruption)."""
    path = out / META
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if diff:
            raise ValueError(f"{path}: the existing shard was made with other settings ({', '.join(diff)}: "
                             f"{[old.get(k) for k in diff]} vs {[meta.get(k) for k in diff]}); use a new output_dir")
    else:
        write_json_atomic(path, meta)


def item_id(prompt_key: str, sample_index: int, seed: int) -> str:
    """Stable id of a synthesis item: hash of the prompt (messages + media), the sample index and the seed."""
    return hashlib.sha1(f"{prompt_key}|{sample_index}|{seed}".encode()).hexdigest()[:20]


def synthesize_preferences(config: SynthesisConfig, policy, prompts, feedback_model=None, *, processor=None,
                           feedback_processor=None, on_batch: Callable[[list[dict]], None] | None = None):
    """Synthesize preference pairs by self-improvement and save them (SPEC §3.3); resumable.

    `prompts`: generation prompts (`prompt` + media, as `aa_lib.data.to_prompts` gives), or a normalized
    align-anything Dataset (converted with to_prompts). Items are (round, prompt) in a fixed order; each finished
    batch is appended to `output_dir/synthesis.jsonl` (flushed and fsynced) before `on_batch(records)` is called,
    and a rerun skips every item already there. Returns the pairs as a `datasets.Dataset` in `to_preference`'s
    format (prompt, chosen = y*, rejected = y, media), also saved to `output_dir/dataset`; what was dropped and why,
    and any shortfall against `target_size`, go to `output_dir/report.json` (and `.aa_report` on the Dataset).
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    P = _prompt_dataset(prompts, config.subtask)
    if len(P) == 0:
        raise ValueError("synthesize_preferences: no prompts")
    check_meta(out, {"seed": config.seed, "policy": str(policy) if isinstance(policy, (str, os.PathLike)) else None,
                      "feedback_model": str(feedback_model) if isinstance(feedback_model, (str, os.PathLike))
                      else getattr(feedback_model, "name", None),
                      "generation": [asdict(config.policy_generation), asdict(config.feedback_generation),
                                     asdict(config.refine_generation)]})

    def judged(rec: dict) -> dict:
        rec["reason"] = pair_filter(rec, config.max_response_tokens, config.drop_truncated)
        rec["kept"] = rec["reason"] is None
        return rec

    shard = out / SHARD
    done = read_shard(shard)
    resumed = len(done)
    for rec in done.values():  # filters are re-applied, so changing them needs no regeneration
        judged(rec)
    keys = [example_key(P[i]) for i in range(len(P))]
    rounds = config.max_rounds if config.target_size is not None else 1
    order = [(r, i, item_id(keys[i], r, config.seed)) for r in range(rounds) for i in range(len(P))]
    models = None  # loaded on first need: a finished shard rebuilds its dataset without any model

    def make_records(batch):
        nonlocal models
        if models is None:
            pol, proc = _as_model(policy, processor)
            fb, fproc = (pol, proc) if feedback_model is None else _as_model(feedback_model, feedback_processor)
            models = (pol, proc, fb, fproc)
        examples = [P[i] for _, i, _ in batch]
        results = _improve(*models, examples, [iid for _, _, iid in batch], config.policy_generation,
                           config.feedback_generation, config.refine_generation, config.batch_size, config.seed)
        return [judged({"id": iid, "prompt_index": i, "sample_index": r, **res})
                for (r, i, iid), res in zip(batch, results)]

    generated = run_items(shard, done, order, config.target_size, config.batch_size, make_records, on_batch)
    return _finalize(config, P, [done[iid] for _, _, iid in order if iid in done], resumed, generated)


def run_items(shard: Path, done: dict[str, dict], order: list[tuple[int, int, str]], target: int | None,
              batch_size: int, make_records: Callable[[list], list[dict]], on_batch=None) -> int:
    """The resumable loop of every synthesis (text and image): the items (round, prompt index, id) of `order` not in
    `done` go in batches through `make_records(batch)` (one record with "id" and "kept" per item), each batch
    appended to `shard` and added to `done` before the next one, until `target` items are kept (None: every item).
    Returns how many items were generated."""
    generated = kept = 0
    pending: list[tuple[int, int, str]] = []
    bar = progress.bar(total=target or len(order), desc="synthesize", unit="pair" if target else "item")

    def run(batch):
        nonlocal generated
        records = make_records(batch)
        for rec in records:
            done[rec["id"]] = rec
        append_records(shard, records)
        generated += len(records)
        if on_batch is not None:
            on_batch(records)
        bar.update(sum(r["kept"] for r in records) if target else len(records))
        return sum(r["kept"] for r in records)

    for r, i, iid in order:
        if target is not None and kept >= target:
            break
        if iid in done:
            kept += done[iid]["kept"]
            continue
        pending.append((r, i, iid))
        # A batch never asks for more items than could still be needed to reach the target.
        need = None if target is None else target - kept
        if len(pending) == batch_size or (need is not None and len(pending) >= need):
            kept += run(pending)
            pending = []
    if pending and (target is None or kept < target):
        kept += run(pending)
    bar.close()
    return generated


def write_report(out: Path, records: list[dict], target: int | None, resumed: int,
                 generated: int) -> tuple[list[dict], dict]:
    """report.json (what was kept, dropped and why, the shortfall against `target`) from a synthesis's records in
    item order; returns (the kept records, at most `target`; the report)."""
    kept = [r for r in records if r["kept"]]
    if target is not None:
        kept = kept[:target]
    dropped = [{"id": r["id"], "prompt_index": r["prompt_index"], "sample_index": r["sample_index"],
                "reason": r["reason"]} for r in records if not r["kept"]]
    counts = dict(Counter(d["reason"].split(":", 1)[0] for d in dropped))  # in order of first occurrence
    report = {"items": len(records), "kept": len(kept), "dropped": len(dropped), "dropped_by_reason": counts,
              "target_size": target, "shortfall": max(0, target - len(kept)) if target is not None else 0,
              "resumed_items": resumed, "generated_items": generated, "dropped_items": dropped}
    write_json_atomic(out / REPORT, report)
    return kept, report


def _finalize(config: SynthesisConfig, P, records: list[dict], resumed: int, generated: int):
    """Write dataset/ and report.json atomically from the shard's records (in item order)."""
    import datasets

    out = Path(config.output_dir)
    kept, report = write_report(out, records, config.target_size, resumed, generated)
    if not kept:
        raise ValueError(f"synthesize_preferences: every one of {len(records)} items was dropped "
                         f"({report['dropped_by_reason']}); nothing to train on (see {out / SHARD} and "
                         f"{out / REPORT})")
    sel = P.select([r["prompt_index"] for r in kept])
    msgs = P.features["prompt"]
    typed = not isinstance(msgs.feature["content"], datasets.Value) if hasattr(msgs, "feature") else True
    chosen = [[_msg("assistant", r["y_star"], typed)] for r in kept]
    rejected = [[_msg("assistant", r["y"], typed)] for r in kept]
    feats = datasets.Features({"prompt": msgs, "chosen": msgs, "rejected": msgs,
                               **{c: P.features[c] for c in P.column_names if c != "prompt"}})
    offset = [0]

    def add(batch):
        n = batch.num_rows
        lo = offset[0]
        offset[0] += n
        cols = {c: batch.column(c).to_pylist() for c in batch.column_names}  # media stay undecoded structs
        return {"prompt": cols["prompt"], "chosen": chosen[lo:lo + n], "rejected": rejected[lo:lo + n],
                **{c: cols[c] for c in cols if c != "prompt"}}

    ds = sel.with_format("arrow").map(add, batched=True, batch_size=1000, features=feats,
                                      remove_columns=sel.column_names, load_from_cache_file=False).with_format(None)
    ds = ds.flatten_indices()
    write_folder_atomic(out / DATASET, lambda tmp: ds.save_to_disk(str(tmp)))
    ds = datasets.load_from_disk(str(out / DATASET))
    ds.aa_report = report
    return ds


def load_synthesized(output_dir):
    """The synthesized pairs saved by `synthesize_preferences` (a datasets.Dataset) with its report."""
    import datasets

    out = Path(output_dir)
    ds = datasets.load_from_disk(str(out / DATASET))
    ds.aa_report = json.loads((out / REPORT).read_text())
    return ds


def to_reward_pairs(pairs):
    """Explicit-prompt pairs -> reward-model pairs (chosen / rejected as whole conversations, media kept)."""
    def fn(ex):
        return {"chosen": ex["prompt"] + ex["chosen"], "rejected": ex["prompt"] + ex["rejected"]}

    return pairs.map(fn, remove_columns=["prompt"], load_from_cache_file=False)
