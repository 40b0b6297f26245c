"""The LLF experiment cells of `aa_lib.experiments` for the image-output subtasks t2i and ti2ti.

Same signatures and result shapes as the text cells; `aa_lib.experiments` dispatches here when a subtask's response
is not text. What differs, and why:
- Initial policy: a tiny Janus whose VQ tokenizer is fitted once (`aa_lib.image_policy`, cached: it plays the role
  of Janus's pretrained VQ, the same for every seed), then image SFT (`policy_sft_rows`) on fresh world prompts with
  their canonical targets (`image_policy.sft_rows`: a prompt's hidden truth rendered without noise) mixed with
  refinement examples [user x, assistant y_k (a mini row's response), user REFINE_TEMPLATE(c_k)] -> x's canonical
  target, so that the policy can act on a critique (the text policies learn the same from
  `experiments.refine_examples`).
- evaluate: greedy images (`image_output.generate_images`, temperature 0) judged by the rubric.
- Feedback model: `llf.train_feedback_model` as for text: `data.to_feedback_sft` puts the response image in the
  assistant turn, which Janus reads through its understanding path (SigLIP tower + aligner); loss on the critique.
- Synthesis (`synthesize`): y sampled, c greedy from the feedback model, y* greedy image on the refinement prompt;
  pairs (y*, y), dropped when y* has the same VQ codes as y; resumable (JSONL shard + PNG files), report.json.
- PPO: a Bradley-Terry reward model on the Janus backbone reading (prompt, response image) through the
  understanding path, then `image_output.train_image_ppo` with that model's score as the reward.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from aa_lib import data, llf, mini, progress
from aa_lib.media import encode_png, write_bytes_atomic, write_folder_atomic
from aa_lib.subtasks import get_subtask



# ---------------------------------------------------------------------------------------------------- sizes
@dataclass
class ImageSizes:
    """Sizes of an image-output cell, derived from an `experiments.Sizes` (`image_sizes`).

    The image policy trains from the VQ-fitted start in more, larger steps than the text policies (one code
    sequence per prompt; measured in image_policy's docstring), so its steps and learning rate are its own; its
    plain examples are the budget's `n_train` fresh rows (t2i 800, ti2ti 8000).

    Measured (seed 0, 48 held-out, greedy, 1 thread, a loaded machine: two runs at once; % of the rubric maximum;
    `train_policy` with `image_sizes` replaced, then `evaluate`):
      t2i   untrained 56.3; refine_share 0.1, 450 steps: 67.3 (SFT 146 s); 0.25, 450 steps: 62.7 (138 s).
      ti2ti untrained 46.2; refine_share 0.1, 500 steps: 58.3 (SFT 198 s + 25 s building 8800 rows, since
      halved by caching the canonical PNGs).
    The size below (360 steps, 32 pairs) is cut from those for the 30-minute `make figures` budget; its scores
    are in the policy runs' results (papermill_runs/policy/*/results.json) and paper_figures/table2_main_results.md.
    Critique uptake (16 held-out prompts; y: the canonical answer with one attribute wrong (t2i) or the edit not
    applied (ti2ti); c: the rubric's critique of y; y*: greedy on [x, y, c]): the named attribute is right in y*
    t2i 31% (0.1) / 44% (0.25), ti2ti 44% (0.1), against 0% in y and 50% / 25% / 62% in the plain greedy answer to
    x: the refinement prompt does not make the policy fix what the critique names more than it does unprompted.
    A full-size ti2ti llf_main cell (refine 0.1 / 500-step policy) took 85 s (DPO 21, PPO 20, feedback 17,
    synthesis 15, evaluations 12); an llf_feedback_fraction cell (3 fractions) 312 s on a
    more loaded machine (3-4 runs on 2 cores): feedback models 109, syntheses 102, DPOs 89, evaluations 12 -
    no one stage dominates (at the main cell's load: ~3 x 46 s = ~140 s)."""

    smoke: bool
    budget: str  # image_policy.BUDGETS entry of the VQ tokenizer fit
    n_heldout: int
    refine_share: float
    sft_steps: int
    sft_lr: float
    batch_size: int
    feedback_steps: int
    feedback_lr: float
    dpo_steps: int
    reward_steps: int
    ppo_iterations: int
    ppo_prompts: int
    ppo_samples: int
    critique_tokens: int
    max_new_tokens: int  # ti2ti: longest response text
    gen_batch_size: int
    max_pairs: int  # binary and synthesized pairs used (the first ones): synthesis time grows with the pairs


def is_smoke(sizes) -> bool:
    from aa_lib.experiments import Sizes

    return sizes.sft_steps <= Sizes.smoke().sft_steps


def image_sizes(sizes) -> ImageSizes:
    """The image sizes for a `Sizes`: fixed image-policy settings, the rest taken from `sizes`."""
    if is_smoke(sizes):
        return ImageSizes(smoke=True, budget="smoke", n_heldout=min(sizes.n_heldout, 4), refine_share=0.5,
                          sft_steps=2, sft_lr=5e-3, batch_size=4, feedback_steps=2, feedback_lr=1e-3, dpo_steps=1,
                          reward_steps=1, ppo_iterations=1, ppo_prompts=2, ppo_samples=2, critique_tokens=8,
                          max_new_tokens=4, gen_batch_size=8, max_pairs=6)
    return ImageSizes(smoke=False, budget="tiny", n_heldout=min(sizes.n_heldout, 48), refine_share=0.1,
                      sft_steps=360, sft_lr=5e-3, batch_size=16, feedback_steps=sizes.feedback_steps,
                      feedback_lr=sizes.sft_lr, dpo_steps=sizes.dpo_steps, reward_steps=sizes.reward_steps,
                      ppo_iterations=max(1, sizes.ppo_episodes // 8), ppo_prompts=8, ppo_samples=2,
                      critique_tokens=sizes.critique_tokens, max_new_tokens=max(sizes.max_new_tokens, 24),
                      gen_batch_size=sizes.gen_batch_size, max_pairs=32)


def _check(subtask: str) -> str:
    name = get_subtask(subtask).name
    if name not in ("t2i", "ti2ti"):
        raise ValueError(f"{name}: aa_lib.image_llf runs the image-output subtasks t2i and ti2ti, not {name}")
    return name


def _quiet(**kw) -> dict:
    return dict(logging_steps=10, report_to="none", save_strategy="no", **progress.trainer_kwargs(), **kw)


# ---------------------------------------------------------------------------------------------------- data
def _png(image) -> bytes:
    """PNG bytes of an image (PIL, array, PNG bytes or a datasets {"bytes","path"} value)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, dict):
        from aa_lib.media import load_image

        image = load_image(image)
    return encode_png(np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image))


def _n_images(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image")


def _prompt_of(ex: dict) -> dict:
    """A generation prompt (`prompt` + its own images) from an example whose `images` may also hold responses."""
    prompt = list(ex["prompt"])
    n = _n_images(prompt)
    return {"prompt": prompt, "images": [_png(im) for im in (ex.get("images") or [])[:n]]}


def _image_turn(text: str | None = None) -> dict:
    """An assistant turn with a response image (ti2ti: its text first, as `data.to_sft` lays it out)."""
    parts = [] if text is None else [{"type": "text", "text": text}]
    return {"role": "assistant", "content": parts + [{"type": "image", "text": None}]}


def _user_turn(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _split(response) -> tuple[str | None, np.ndarray]:
    """(text or None, image) of a response: an image (t2i) or {"text", "image"} (ti2ti)."""
    return (response["text"], response["image"]) if isinstance(response, dict) else (None, response)


def _same(a, b) -> bool:
    """Two responses are the same: equal text and equal pixels."""
    (ta, ia), (tb, ib) = _split(a), _split(b)
    return ta == tb and np.array_equal(np.asarray(ia), np.asarray(ib))


def heldout(subtask: str, sizes, root=".cache/mini"):
    """`experiments.heldout` for image outputs: prompts only (to_sft's `images` also holds the response image)."""
    from aa_lib.experiments import HeldOut

    name = _check(subtask)
    isz = image_sizes(sizes)
    ds = mini.dataset(name, isz.n_heldout, seed=sizes.heldout_seed, split="heldout", root=root)
    conv = data.to_sft(ds)
    if len(conv) != len(ds):
        raise RuntimeError(f"held-out {name}: {len(ds) - len(conv)} rows lost converting to prompts")
    return HeldOut(name, [_prompt_of(conv[i]) for i in range(len(conv))], list(ds["mini_meta"]))


def policy_sft_rows(subtask: str, ds, n_train: int, refine_share: float, seed: int = 0) -> list[dict]:
    """The image policy's SFT mix, shuffled: `n_train` fresh prompts of the world -> their canonical targets
    (`image_policy.sft_rows`: fresh rows generalise, a few rows over many epochs were memorised), plus
    round(refine_share x n_train) refinement examples [x, y_k, REFINE_TEMPLATE(c_k)] -> x's canonical target, from
    the annotated responses of the mini rows `ds` (they carry the critiques; drawn without replacement until all
    are used, then again)."""
    from aa_lib.image_policy import canonical_completion, sft_rows

    rows = []
    for r in sft_rows(subtask, n_train, seed):  # one layout for every row: a datasets table takes one type a column
        prompt = [_user_turn(r["prompt"])] if isinstance(r["prompt"], str) else r["prompt"]
        rows.append({**r, "prompt": prompt, "images": list(r.get("images") or [])})
    n_ref = int(round(refine_share * n_train))
    if n_ref:
        fb = data.to_feedback_sft(ds)  # two per row, in row order: the response image is the last of `images`
        if len(fb) != 2 * len(ds):
            raise RuntimeError(f"{2 * len(ds) - len(fb)} responses of the SFT rows without a critique")
        rng = np.random.default_rng([seed, 11])
        pick = np.concatenate([rng.permutation(len(fb)) for _ in range(-(-n_ref // len(fb)))])[:n_ref]
        metas = list(ds["mini_meta"])
        for n, j in enumerate(pick):
            ex = fb[int(j)]
            crit = ex["completion"][0]["content"][0]["text"]
            completion, target = canonical_completion(json.loads(metas[int(j) // 2]))
            rows.append({"prompt": ex["prompt"][:2] + [_user_turn(llf.REFINE_TEMPLATE.format(critique=crit))],
                         "images": [_png(im) for im in ex["images"]], "completion": completion,
                         "completion_images": target, "id": f"refine-{n}-r{int(j) // 2}"})
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


# ---------------------------------------------------------------------------------------------------- policy
def vq_start(isz: ImageSizes, seed: int) -> Path:
    """The tiny Janus of `seed` carrying the shared fitted VQ (`image_policy.start_model`, cached)."""
    from aa_lib import image_policy

    return image_policy.start_model(seed, budget=isz.budget)


def train_policy(subtask: str, out_dir, seed: int, sizes, root=".cache/mini") -> dict:
    """`experiments.train_policy` for image outputs: out_dir/untrained (the VQ-fitted start, no SFT) and
    out_dir/policy (image SFT on canonical + refinement examples)."""
    from aa_lib.experiments import world_rows
    from aa_lib.image_policy import budget_settings
    from aa_lib.train.image_output import ImageSFTConfig, train_image_sft

    _check(subtask)
    isz = image_sizes(sizes)
    out_dir = Path(out_dir)
    t0 = time.time()
    start = vq_start(isz, seed)
    untrained = write_folder_atomic(out_dir / "untrained", lambda tmp: shutil.copytree(start, tmp, dirs_exist_ok=True))
    sft, _ = world_rows(subtask, seed, sizes, root)
    rows = policy_sft_rows(subtask, sft, budget_settings(isz.budget, subtask)["n_train"], isz.refine_share, seed)
    cfg = ImageSFTConfig(output_dir=str(out_dir / "policy"), max_steps=isz.sft_steps, learning_rate=isz.sft_lr,
                         per_device_train_batch_size=isz.batch_size, lr_scheduler_type="cosine",
                         warmup_steps=min(10, isz.sft_steps // 10), weight_decay=0.0, seed=seed, data_seed=seed,
                         **_quiet())
    t1 = time.time()
    policy = train_image_sft(cfg, untrained, rows)
    return {"untrained": str(untrained), "policy": str(policy), "sft_examples": len(rows),
            "seconds_sft": round(time.time() - t1, 1), "seconds": round(time.time() - t0, 1)}


def _load(model_or_path):
    from aa_lib.experiments import load_pair

    return load_pair(model_or_path, family="janus")


# ---------------------------------------------------------------------------------------------------- judging
def _reading(response) -> dict:
    """The rubric checker's reading of a response image (+ the text for ti2ti), JSON-serializable: what
    `examples` shows of a response."""
    text, image = _split(response)
    r = json.loads(json.dumps(mini.read_image(image), default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return r if text is None else {"text": text, "image": r}


def _respond(model, proc, subtask: str, examples: list[dict], seed: int, temperature: float, isz) -> list:
    """Policy responses (`image_policy.generate_responses`): t2i images, ti2ti {"text", "image"}."""
    from aa_lib.image_policy import generate_responses

    return generate_responses(model, proc, examples, seed=seed, temperature=temperature,
                              max_new_tokens=isz.max_new_tokens, batch_size=isz.gen_batch_size, subtask=subtask)


def evaluate(model_or_path, held, sizes, seed: int = 0) -> dict:
    """Greedy images for the held-out prompts judged by the rubric (`experiments.score_responses`); `examples`:
    the checker's reading of the first 5 images; `responses`: the images (arrays, not saved)."""
    from aa_lib.experiments import score_responses

    isz = image_sizes(sizes)
    model, proc = _load(model_or_path)
    responses = _respond(model, proc, held.subtask, held.examples, seed, 0, isz)
    out = score_responses(held.subtask, held.metas, responses)
    out["examples"] = [_reading(r) for r in responses[:5]]
    out["responses"] = responses
    return out


def respondent_scores(held, seed: int = 0) -> dict:
    """Fig. 11 for image outputs: `experiments.respondent_scores` with each respondent drawing its answer
    (`respond_scene` + render; ti2ti: with its text)."""
    from aa_lib.experiments import respondent_scores as score_respondents
    from aa_lib.mini.respondents import respond_scene, respond_ti2ti_text

    _check(held.subtask)

    def answer(item, faults, rng, cfg):
        image = mini.render_scene(respond_scene(item, faults, rng, cfg), cfg.image_size)
        return {"text": respond_ti2ti_text(item, faults, rng), "image": image} if item["subtask"] == "ti2ti" else image

    return score_respondents(held, seed, answer=answer)


# ---------------------------------------------------------------------------------------------------- DPO
def _preset(stage: str, subtask: str, profile: str):
    from aa_lib.presets import get_preset

    return get_preset(stage, subtask, profile)


def _first(pairs, n: int):
    return pairs.select(range(min(n, len(pairs)))) if hasattr(pairs, "select") else list(pairs)[:n]


def dpo(subtask: str, policy, pairs, out_dir, sizes, seed: int, profile: str = "tiny") -> Path:
    """Image DPO (`image_output.train_image_dpo`) from the policy on the first `max_pairs` preference pairs
    (binary: `data.to_preference`, chosen_images / rejected_images; LLF: `synthesize`'s)."""
    from aa_lib.train.image_output import ImageDPOConfig, train_image_dpo

    _check(subtask)
    isz = image_sizes(sizes)
    p = _preset("dpo", subtask, profile)
    cfg = ImageDPOConfig(output_dir=str(out_dir), max_steps=isz.dpo_steps, learning_rate=p.learning_rate,
                         lr_scheduler_type=p.scheduler, beta=p.beta, per_device_train_batch_size=isz.batch_size,
                         weight_decay=p.weight_decay, seed=seed, data_seed=seed, **_quiet())
    return train_image_dpo(cfg, policy, _first(pairs, isz.max_pairs))


# ---------------------------------------------------------------------------------------------------- feedback
def train_feedback(subtask: str, policy, align_rows, out_dir, sizes, seed: int, fraction: float = 1.0,
                   profile: str = "tiny") -> Path:
    """A feedback model: SFT of the image policy on (x, y image) -> critique, loss on the critique only
    (`llf.train_feedback_model`; the image goes through Janus's understanding path)."""
    from aa_lib.experiments import feedback_steps_for
    from aa_lib.presets import make_config

    _check(subtask)
    isz = image_sizes(sizes)
    cfg = make_config("feedback_model", subtask, out_dir, profile,
                      max_steps=feedback_steps_for(isz.feedback_steps, fraction),
                      per_device_train_batch_size=isz.batch_size, seed=seed, data_seed=seed,
                      learning_rate=isz.feedback_lr, **_quiet())
    return llf.train_feedback_model(cfg, policy, align_rows, fraction=fraction)


def _critique_example(ex: dict, y) -> dict:
    """The feedback model's prompt for a response, laid out as `data.to_feedback_sft` lays out training."""
    text, image = _split(y)
    return {"prompt": list(ex["prompt"]) + [_image_turn(text), _user_turn(data.CRITIQUE_REQUEST)],
            "images": list(ex["images"]) + [encode_png(image)]}


def _refine_example(ex: dict, y, critique: str) -> dict:
    text, image = _split(y)
    request = _user_turn(llf.REFINE_TEMPLATE.format(critique=critique))
    return {"prompt": list(ex["prompt"]) + [_image_turn(text), request],
            "images": list(ex["images"]) + [encode_png(image)]}


def _sample_images(model, proc, examples: list[dict], keys: list[str], seed: int, temperature: float,
                   batch_size: int) -> list[np.ndarray]:
    """t2i images sampled in batches; a row's sample depends on (seed, its key) only, not on its batch."""
    from aa_lib.llf.generation import seed_of
    from aa_lib.models import janus_decode_images
    from aa_lib.train.image_output import generation_batch, prompt_example, sample_image_codes

    images = []
    for s in range(0, len(examples), batch_size):
        chunk = [prompt_example(e, i) for i, e in enumerate(examples[s:s + batch_size])]
        gens = [torch.Generator().manual_seed(seed_of(seed, k)) for k in keys[s:s + batch_size]]
        c = sample_image_codes(model, generation_batch(model, proc, chunk), gens, temperature)
        images += [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in janus_decode_images(model, proc, c)]
    return images


def _sample(model, proc, subtask: str, examples: list[dict], keys: list[str], seed: int, isz) -> list:
    """Responses sampled at temperature 1, each seeded by (seed, its key) so that a resumed synthesis draws what
    the uninterrupted one drew (ti2ti: one prompt at a time, as `generate_texts` seeds by position)."""
    from aa_lib.llf.generation import seed_of

    if subtask == "t2i":
        return _sample_images(model, proc, examples, keys, seed, 1.0, isz.gen_batch_size)
    return [_respond(model, proc, subtask, [e], seed_of(seed, k) % 2**31, 1.0, isz)[0]
            for e, k in zip(examples, keys)]


def improve_images(policy, proc, feedback, fproc, subtask: str, examples: list[dict], keys: list[str],
                   isz: ImageSizes, seed: int) -> list[dict]:
    """Self-improvement of image responses (SPEC §3.2): y ~ policy(x) at temperature 1; c = feedback(x, y) greedy;
    y* = greedy response of the policy to (x, y, c). Returns dicts y, c, c_finished, y_star (responses: t2i images,
    ti2ti {"text", "image"})."""
    ys = _sample(policy, proc, subtask, examples, [k + ":y" for k in keys], seed, isz)
    cs = llf.generate_detailed(feedback, fproc, [_critique_example(e, y) for e, y in zip(examples, ys)],
                               llf.GenerationOptions(max_new_tokens=isz.critique_tokens), isz.gen_batch_size, seed,
                               [k + ":c" for k in keys])
    stars = _respond(policy, proc, subtask, [_refine_example(e, y, c.text) for e, y, c in zip(examples, ys, cs)],
                     seed, 0, isz)
    return [{"y": y, "c": c.text, "c_finished": c.finished, "y_star": s} for y, c, s in zip(ys, cs, stars)]


# ---------------------------------------------------------------------------------------------------- synthesis
def synthesize(policy, feedback, align_rows, out_dir, target_size: int, sizes, seed: int):
    """Synthesized image pairs (chosen y*, rejected y) from the alignment prompts, min(target_size, max_pairs) of
    them if possible, in `to_preference`'s layout (chosen_images / rejected_images).

    Resumable like `llf.synthesize_preferences`: items (round, prompt) in a fixed order, each batch's images
    written as PNG under out_dir/images/ and its records appended to synthesis.jsonl before the next batch; a
    rerun skips finished items. Pairs whose y* has y's VQ codes are dropped ("identical"); report.json says what
    was kept and dropped. None when every item was dropped (the reasons are in report.json)."""
    from aa_lib.llf.generation import example_key
    from aa_lib.llf.synthesis import REPORT, SHARD, append_records, check_meta, read_shard, write_json_atomic, item_id

    isz = image_sizes(sizes)
    subtask = _check(align_rows.info.config_name)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    prompts = data.to_prompts(align_rows)
    P = [_prompt_of(prompts[i]) for i in range(len(prompts))]
    if not P:
        raise ValueError("synthesize: no prompts")
    target = min(target_size, isz.max_pairs)
    max_rounds = 4
    check_meta(out, {"seed": seed, "policy": str(policy),
                      "feedback_model": None if feedback is None else str(feedback),
                      "generation": {"y": "temperature 1", "c": f"greedy, {isz.critique_tokens} tokens",
                                     "y_star": "greedy"}})
    shard = out / SHARD
    done = read_shard(shard)
    resumed = len(done)
    keys = [example_key(p) for p in P]
    order = [(r, i, item_id(keys[i], r, seed)) for r in range(max_rounds) for i in range(len(P))]
    models = None
    generated = kept = 0
    bar = progress.bar(total=target, desc="synthesize", unit="pair")

    def run(batch):
        nonlocal models, generated
        if models is None:
            pol = _load(policy)
            models = (*pol, *(pol if feedback is None else _load(feedback)))
        res = improve_images(*models, subtask, [P[i] for _, i, _ in batch], [iid for _, _, iid in batch], isz,
                             seed)
        records = []
        for (r, i, iid), x in zip(batch, res):
            rec = {"id": iid, "prompt_index": i, "sample_index": r, "c": x["c"], "c_finished": x["c_finished"]}
            for side in ("y", "y_star"):
                text, image = _split(x[side])
                rec[side] = f"images/{iid}_{side}.png"
                rec[f"{side}_text"] = text
                write_bytes_atomic(out / rec[side], encode_png(image))
            rec["reason"] = "identical: y* equals y" if _same(x["y"], x["y_star"]) else None
            rec["kept"] = rec["reason"] is None
            records.append(rec)
            done[iid] = rec
        append_records(shard, records)
        generated += len(records)
        bar.update(sum(r["kept"] for r in records))
        return sum(r["kept"] for r in records)

    pending = []
    for r, i, iid in order:
        if kept >= target:
            break
        if iid in done:
            kept += done[iid]["kept"]
            continue
        pending.append((r, i, iid))
        if len(pending) == isz.gen_batch_size or len(pending) >= target - kept:
            kept += run(pending)
            pending = []
    if pending and kept < target:
        kept += run(pending)
    bar.close()
    records = [done[iid] for _, _, iid in order if iid in done]
    keep = [r for r in records if r["kept"]][:target]
    dropped = [{"id": r["id"], "prompt_index": r["prompt_index"], "sample_index": r["sample_index"],
                "reason": r["reason"]} for r in records if not r["kept"]]
    counts: dict[str, int] = {}
    for d in dropped:
        counts[d["reason"].split(":", 1)[0]] = counts.get(d["reason"].split(":", 1)[0], 0) + 1
    report = {"items": len(records), "kept": len(keep), "dropped": len(dropped), "dropped_by_reason": counts,
              "target_size": target, "requested_size": target_size, "shortfall": max(0, target - len(keep)),
              "resumed_items": resumed, "generated_items": generated, "dropped_items": dropped}
    write_json_atomic(out / REPORT, report)
    if not keep:
        return None
    return _save_pairs(out, [P[r["prompt_index"]] for r in keep], keep, subtask)


def _save_pairs(out: Path, prompts: list[dict], records: list[dict], subtask: str):
    """dataset/ in `to_preference`'s layout, written atomically and read back."""
    import datasets

    msgs = [{"role": datasets.Value("string"), "content": datasets.List(
        {"type": datasets.Value("string"), "text": datasets.Value("string")})}]
    images = datasets.List(datasets.Image())
    feats = {"prompt": msgs, "chosen": msgs, "rejected": msgs, "chosen_images": images, "rejected_images": images}
    if subtask == "ti2ti":
        feats["images"] = images

    def png(path):
        return {"bytes": (out / path).read_bytes(), "path": None}

    rows = []
    for p, r in zip(prompts, records):
        row = {"prompt": p["prompt"], "chosen": [_image_turn(r["y_star_text"])], "rejected": [_image_turn(r["y_text"])],
               "chosen_images": [png(r["y_star"])], "rejected_images": [png(r["y"])]}
        if subtask == "ti2ti":
            row["images"] = [{"bytes": b, "path": None} for b in p["images"]]
        rows.append(row)
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(feats))
    write_folder_atomic(out / "dataset", lambda tmp: ds.save_to_disk(str(tmp)))
    return datasets.load_from_disk(str(out / "dataset"))


# ---------------------------------------------------------------------------------------------------- PPO
@dataclass
class ResponseImageCollator:
    """Reward-model rows for image responses: [user x (+ images), assistant image] rendered whole (the response
    image read through Janus's understanding path); pairs -> chosen rows then rejected rows."""

    processor: object
    max_length: int | None = None

    def __post_init__(self):
        from aa_lib.collators import PromptCollator

        self.inner = PromptCollator(self.processor, "janus", max_length=self.max_length)

    def rows(self, convs: list[tuple[list[dict], list]]) -> dict:
        """convs: (messages ending with the assistant image turn, images in placeholder order)."""
        rows = []
        for i, (messages, images) in enumerate(convs):
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            media = self.inner._media({"images": images}, f"row {i}", messages)
            enc = self.processor(text=[text], return_tensors="pt", add_special_tokens=False, **media)
            ids = enc["input_ids"][0].tolist()
            rows.append({"input_ids": ids, "labels": [-100] * len(ids), "n_prompt": len(ids),
                         "media": {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}})
        out = self.inner._stack(rows)
        out.pop("labels")
        out.pop("completion_mask")
        return out

    def __call__(self, examples: list[dict]) -> dict:
        convs = {"chosen": [], "rejected": []}
        for ex in examples:
            for side in convs:
                msgs = list(ex[side])
                if "prompt" in ex and ex["prompt"] is not None:
                    msgs = list(ex["prompt"]) + msgs
                n_prompt = _n_images(msgs) - 1
                convs[side].append((msgs, list(ex.get("images") or [])[:n_prompt] + list(ex[f"{side}_images"])))
        return self.rows(convs["chosen"] + convs["rejected"])


def train_image_reward(subtask: str, policy, reward_pairs, out_dir, sizes, seed: int, profile: str = "tiny") -> Path:
    """A Bradley-Terry reward model (`train.reward.RewardModel`) on the policy's backbone over (x, y image)."""
    from aa_lib.presets import make_config
    from aa_lib.train.common import as_dataset, load_for_training
    from aa_lib.train.reward import MultimodalRewardTrainer, RewardModel

    isz = image_sizes(sizes)
    cfg = make_config("reward_model", subtask, out_dir, profile, max_steps=isz.reward_steps,
                      per_device_train_batch_size=isz.batch_size, seed=seed, data_seed=seed, **_quiet())
    cfg.remove_unused_columns = False
    model, proc, family = load_for_training(policy, cfg)
    torch.manual_seed(seed)
    rm = RewardModel(model, family)
    trainer = MultimodalRewardTrainer(model=rm, args=cfg, train_dataset=as_dataset(_first(reward_pairs, isz.max_pairs)),
                                      data_collator=ResponseImageCollator(proc), processing_class=proc)
    trainer.train()
    return rm.save(out_dir, proc, source_path=policy)


def reward_fn_of(reward_path):
    """reward_fn(examples, images) -> scores of a reward model folder, for `image_output.train_image_ppo`."""
    from aa_lib.train.reward import load_reward_model

    rm, proc = load_reward_model(reward_path)
    coll = ResponseImageCollator(proc)

    def fn(examples: list[dict], images: list[np.ndarray]) -> list[float]:
        convs = []
        for ex, im in zip(examples, images):
            p = _prompt_of(ex)
            text = ex["completion"][0]["content"][0]["text"] if ex.get("completion") else None
            convs.append((p["prompt"] + [_image_turn(text)], p["images"] + [encode_png(im)]))
        with torch.no_grad():
            return [float(v) for v in rm(**coll.rows(convs))]

    return fn


def ppo(subtask: str, policy, reward_pairs, prompts, out_dir, sizes, seed: int,
        profile: str = "tiny") -> tuple[Path, Path]:
    """A reward model (from the policy) on `reward_pairs`, then image PPO from the policy on `prompts` with that
    model's score as the reward. Returns (policy folder, reward model folder)."""
    from aa_lib.train.image_output import ImagePPOConfig, train_image_ppo

    _check(subtask)
    isz = image_sizes(sizes)
    out_dir = Path(out_dir)
    rm_path = train_image_reward(subtask, policy, reward_pairs, out_dir / "reward", sizes, seed, profile)
    p = _preset("ppo", subtask, profile)
    cfg = ImagePPOConfig(output_dir=str(out_dir / "policy"), learning_rate=p.learning_rate,
                         num_iterations=isz.ppo_iterations, prompts_per_iteration=isz.ppo_prompts,
                         samples_per_prompt=isz.ppo_samples, seed=seed)
    examples = [_prompt_of(prompts[i]) for i in range(len(prompts))]
    if subtask == "ti2ti":  # PPO moves the image codes; the response text is the policy's greedy text, kept fixed
        from aa_lib.image_policy import generate_texts

        model, proc = _load(policy)
        texts = generate_texts(model, proc, examples, seed=seed, max_new_tokens=isz.max_new_tokens,
                               batch_size=isz.gen_batch_size)
        examples = [{**e, "completion": [_image_turn(t)]} for e, t in zip(examples, texts)]
    return train_image_ppo(cfg, policy, examples, reward_fn_of(rm_path)), rm_path


# ---------------------------------------------------------------------------------------------------- Table 3
def ablation(policy, feedback, held, sizes, seed: int) -> dict:
    """Table 3 for images: self-improve the held-out prompts with `feedback` (None: the policy critiques itself);
    win rate of y* over y by `mini.judge_pair` (ties half), rubric scores of y and y*, share of changed images."""
    from aa_lib.experiments import score_responses
    from aa_lib.llf.generation import example_key

    _check(held.subtask)
    isz = image_sizes(sizes)
    pol = _load(policy)
    fb = pol if feedback is None else _load(feedback)
    keys = [f"{example_key(e)}#{i}" for i, e in enumerate(held.examples)]
    res = improve_images(*pol, *fb, held.subtask, held.examples, keys, isz, seed)
    ys, stars = [r["y"] for r in res], [r["y_star"] for r in res]
    wr = llf.win_rate(lambda i, a, b: mini.judge_pair(held.metas[i], a, b, held.subtask), ys, stars)
    return {**wr, "win_rate": 100 * wr["win_rate"],
            "changed": 100 * float(np.mean([not _same(r["y"], r["y_star"]) for r in res])),
            "score_y": score_responses(held.subtask, held.metas, ys)["score"],
            "score_y_star": score_responses(held.subtask, held.metas, stars)["score"],
            "examples": [{"y": _reading(r["y"]), "c": r["c"], "y_star": _reading(r["y_star"])} for r in res[:4]]}


def sizes_dict(sizes) -> dict:
    return asdict(image_sizes(sizes))


__all__ = ["ImageSizes", "image_sizes", "heldout", "policy_sft_rows", "train_policy", "evaluate", "respondent_scores",
           "dpo", "train_feedback", "improve_images", "synthesize", "train_image_reward", "reward_fn_of", "ppo",
           "ablation", "ResponseImageCollator"]
