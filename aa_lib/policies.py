"""The policy families of the LLF experiments: what differs between a policy that answers in text (Llama, LLaVA,
Qwen2-VL, Qwen2-Audio: `TextPolicy`) and one that answers with an image (Janus, t2i and ti2ti: `ImagePolicy`), so
that every cell of `aa_lib.experiments` is written once against `policy_for(subtask)`.

A family says how a policy starts (`start`), what its SFT examples are (`sft_examples`) and how it trains SFT
(`train_sft`), DPO (`dpo`), a feedback model (`trainer_kw`: what its config adds) and reward model + PPO (`ppo`);
how it responds (`respond`) and self-improves (`improve`: y, then the critique and refinement prompts with y in the
conversation as a text turn or an image turn, c, y*); whether two responses are the same (`same`); how a response
is shown in results (`show`); how a simulated respondent answers (`answer`); how synthesis runs (`synthesize`:
`llf.synthesize_preferences`, or the same resumable loop `llf.synthesis.run_items` over image records).

Why the image family differs where it does:
- Start: a tiny Janus carrying a VQ tokenizer fitted once to the mini world's canonical images (`image_policy`,
  cached: it plays Janus's pretrained VQ, the same for every seed). SFT: fresh world prompts -> their canonical
  targets (`image_policy.sft_rows`) mixed with refinement examples [x, y_k, REFINE_TEMPLATE(c_k)] -> x's canonical
  target, so that the policy can act on a critique (the text policies learn the same from `refine_examples`).
- Responses are images (ti2ti: {"text", "image"}); the feedback model reads the response image through Janus's
  understanding path (SigLIP tower + aligner), as `data.to_feedback_sft` lays it out, loss on the critique.
- Synthesis: y sampled, c greedy from the feedback model, y* greedy image on the refinement prompt; pairs (y*, y)
  dropped when y* has y's pixels; resumable (JSONL shard + PNG files) like `llf.synthesize_preferences`.
- PPO: a Bradley-Terry reward model on the Janus backbone reading (prompt, response image) through the
  understanding path, then `image_output.train_image_ppo` with that model's score as the reward.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aa_lib import data, llf, mini, progress
from aa_lib.media import encode_png, load_image, write_bytes_atomic, write_folder_atomic
from aa_lib.subtasks import get_subtask

# The family each subtask trains at profile tiny (the paper's families, SPEC §1; t2t has no paper column: llama;
# t2i and ti2ti: Janus, the tiny family that decodes images).
FAMILIES = {"t2t": "llama", "ti2t": "llava", "tv2t": "qwen2_vl", "ta2t": "qwen2_audio", "t2i": "janus",
            "ti2ti": "janus"}


def family_for(subtask: str) -> str:
    name = get_subtask(subtask).name
    if name not in FAMILIES:
        raise ValueError(f"{name}: the paper runs no LLF experiment on this subtask; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def policy_for(subtask: str):
    """The policy family of a subtask's LLF experiments."""
    family = family_for(subtask)
    return ImagePolicy() if family == "janus" else TextPolicy(family)


def quiet(**kw) -> dict:
    """Trainer arguments of every experiment stage: no saving or reporting, aa_lib's progress bars."""
    return {**dict(logging_steps=10, report_to="none", save_strategy="no", **progress.trainer_kwargs()), **kw}


def load_pair(model_or_path, family: str | None = None):
    """(model, processor) from a folder, or the pair itself when already loaded."""
    from aa_lib.models import load_model

    if isinstance(model_or_path, tuple):
        return model_or_path
    return load_model(model_or_path, family=family)


def _set_text(message: dict, text: str) -> dict:
    if isinstance(message["content"], str):
        return {"role": message["role"], "content": text}
    return {"role": message["role"], "content": [{"type": "text", "text": text}]}


def refine_examples(ds, n: int | None = None, seed: int = 0):
    """Refinement SFT examples from annotated rows: prompt = [user x, assistant y_k, user "{critique_k}. Now, please
    refine ..."] -> the row's preferred response (y_k is either response, so correct answers learn to stay)."""
    st = get_subtask(ds.info.config_name)
    fb = data.to_feedback_sft(ds)  # two examples per row (k = 1, 2), prompt media kept
    if len(fb) != 2 * len(ds):
        raise RuntimeError(f"{st.name}: {2 * len(ds) - len(fb)} responses without a critique")
    target = data.to_sft(ds)["completion"]

    def fn(prompt, completion, idx):
        critique = completion[0]["content"] if isinstance(completion[0]["content"], str) else \
            completion[0]["content"][0]["text"]
        request = _set_text(prompt[2], llf.REFINE_TEMPLATE.format(critique=critique))
        return {"prompt": [prompt[0], prompt[1], request], "completion": target[idx // 2]}

    out = fb.map(fn, input_columns=["prompt", "completion"], with_indices=True, load_from_cache_file=False)
    if n is not None and n < len(out):
        out = out.select(np.sort(np.random.default_rng(seed).permutation(len(out))[:n]))
    return out


# The faults of the text policies' SFT targets: the world's reference answer (right values, so perception is learnt
# from the truth) rewritten with the style faults a preference can teach (`mini.respondents`: a broken word-count
# rule, filler or restated answers, a missing detail, compliance with an unsafe request), never a wrong value. The
# paper's initial policies are chat models with such faults; without them a tiny policy's only errors are perception
# errors, which a few hundred preference pairs do not teach (../shared/spec/MINI_WORLD_FACTS.md). On 400 rows these
# targets score ~90 % of the rubric maximum (the clean reference: 100 %).
INITIAL_POLICY_FAULTS = {"ignore_format": 0.2, "redundant": 0.3, "missing_detail": 0.3, "unsafe": 0.5}


def initial_policy_examples(ds, seed: int = 0):
    """Plain SFT examples of mini rows: prompt -> the reference answer with `INITIAL_POLICY_FAULTS` (seeded per
    row)."""
    from aa_lib.mini.respondents import Respondent, respond_text, sample_faults

    who = Respondent("initial-policy", INITIAL_POLICY_FAULTS)
    metas = list(ds["mini_meta"])

    def fn(completion, idx):
        item = json.loads(metas[idx])
        rng = np.random.default_rng([seed, 41, idx])
        text = respond_text(item, sample_faults(who, item, rng), rng, mini.make_config(**item.get("world", {})))
        return {"completion": [_set_text(completion[0], text)]}

    return data.to_sft(ds).map(fn, input_columns=["completion"], with_indices=True, load_from_cache_file=False)


def policy_sft_examples(ds, refine_share: float, seed: int = 0):
    """The text policy's SFT mix: plain examples of every row (`initial_policy_examples`) plus `refine_share` x as
    many refinement examples."""
    import datasets

    plain = initial_policy_examples(ds, seed)
    n_ref = int(round(refine_share * len(plain)))
    if n_ref == 0:
        return plain
    ref = refine_examples(ds, n_ref, seed).cast(plain.features)
    return datasets.concatenate_datasets([plain, ref]).shuffle(seed=seed).flatten_indices()


def without_media(example: dict) -> dict:
    """`example` with the prompt's media taken out (its image / video / audio parts and columns)."""
    def strip(m):
        if isinstance(m["content"], str):
            return m
        return {"role": m["role"], "content": [p for p in m["content"] if p["type"] == "text"]}

    return {k: ([strip(m) for m in v] if k == "prompt" else v) for k, v in example.items()
            if k not in llf.MEDIA_COLUMNS}


def own_samples(pair, rows, sizes, seed: int, tag: str, n: int = 1):
    """The policy's own answers to the rows' prompts with the mini rubric's verdicts: (prompt, mini_meta, y, verdict)
    for `n` answers per row sampled at temperature 1, each seeded by the row's key, `tag` and the sample index
    (sample 0 of every row first)."""
    conv = data.to_sft(rows)
    metas = list(rows["mini_meta"])
    prompts = [{c: v for c, v in conv[i].items() if c != "completion"} for i in range(len(conv))]
    keys = [llf.example_key(p) for p in prompts]
    for r in range(n):
        ys = llf.generate(*pair, prompts, llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens, do_sample=True),
                          batch_size=sizes.gen_batch_size, seed=seed, keys=[f"{k}:{tag}{r}" for k in keys])
        for p, meta, y in zip(prompts, metas, ys):
            yield p, meta, y, mini.rubric_score(meta, y, rows.info.config_name)


def assistant_turn(text: str, typed: bool) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}] if typed else text}]


def typed_completions(ds) -> bool:
    """Whether a `data.to_sft` Dataset's completions are typed content parts (multimodal templates) or strings."""
    return not isinstance(ds[0]["completion"][0]["content"], str)


def reading_examples(pair, rows, sizes, seed: int) -> list[dict]:
    """Stage 2 of the text policy's SFT: on-policy refinement examples that teach it to read a critique (the recipe
    of ../shared/spec/MINI_WORLD_FACTS.md, "what it took for feedback to be used").

    For each SFT row, `reading_samples` answers y sampled from the stage-1 policy (temperature 1, seeded by the row's
    key and the sample index); c = the mini rubric's critique of y; target = the world's reference answer when y is
    imperfect (the fix the critique names) and y itself when it is perfect (the critique says keep it, and a
    right answer learns to stay right). The prompt's media are dropped on a `reading_media_drop` share of them: the
    media already predict the target, so without the drop the critique gets no gradient."""
    typed = typed_completions(data.to_sft(rows.select(range(1))))
    rng = np.random.default_rng([seed, 23])
    out = []
    for p, meta, y, verdict in own_samples(pair, rows, sizes, seed, "read", sizes.reading_samples):
        perfect = all(v == 3 for v in verdict["scores"].values())
        target = y if perfect else json.loads(meta)["reference"]
        ex = llf.refine_example(p, y, verdict["critique"])
        if rng.random() < sizes.reading_media_drop:
            ex = without_media(ex)
        out.append({**{c: [] for c in llf.MEDIA_COLUMNS if c in p}, **ex, "completion": assistant_turn(target, typed)})
    return out


# ---------------------------------------------------------------------------------------------------- text
@dataclass
class TextPolicy:
    """A policy that answers in text: a tiny model of `family` built from config (tokenizer trained on the mini
    corpus), trained with aa_lib's TRL trainers; responses are strings."""

    family: str

    def start(self, subtask: str, out_dir, seed: int, sizes) -> Path:
        """The untrained model: built from config with a tokenizer trained on the mini corpus."""
        from aa_lib.models import build_tiny

        corpus = mini.corpus() + [llf.REFINE_TEMPLATE, data.CRITIQUE_REQUEST, data.CRITIQUE_REQUEST_AUDIO]
        return build_tiny(self.family, out_dir, corpus, seed=seed)

    def sft_examples(self, subtask: str, rows, sizes, seed: int):
        return policy_sft_examples(rows, sizes.refine_share, seed)

    def train_sft(self, start, examples, out_dir, sizes, seed: int) -> Path:
        from aa_lib.train.sft import SFTConfig, train_sft

        cfg = SFTConfig(output_dir=str(out_dir), max_steps=sizes.sft_steps, learning_rate=sizes.sft_lr,
                        per_device_train_batch_size=sizes.batch_size, lr_scheduler_type="cosine", warmup_steps=0.05,
                        max_length=sizes.max_length, seed=seed, data_seed=seed, **quiet())
        return train_sft(cfg, start, examples)

    def train_reading(self, plain, rows, out_dir, sizes, seed: int) -> Path:
        """Stage 2: `train_sft` with the reading_* sizes, from the plain policy, on the rows' plain examples mixed
        with `reading_examples`."""
        import dataclasses

        import datasets

        plain_ex = initial_policy_examples(rows, seed)
        reading = datasets.Dataset.from_list(reading_examples(self.load(plain), rows, sizes, seed),
                                             features=plain_ex.features)
        mix = datasets.concatenate_datasets([plain_ex, reading]).shuffle(seed=seed).flatten_indices()
        stage2 = dataclasses.replace(sizes, sft_steps=sizes.reading_steps, sft_lr=sizes.reading_lr,
                                     batch_size=sizes.reading_batch_size or sizes.batch_size)
        return self.train_sft(plain, mix, out_dir, stage2, seed)

    def critic_examples(self, pair, rows, sizes, seed: int):
        """The shared critic's (x, y, c) (`experiments.train_critic`): each row's prompt with its media, the policy's
        own sample y, c = the mini rubric's critique of y (it names every wrong value and its fix)."""
        import datasets

        conv = data.to_sft(rows)
        typed = typed_completions(conv)
        out = [{**{c: [] for c in llf.MEDIA_COLUMNS if c in p}, **llf.critique_example(p, y),
                "completion": assistant_turn(verdict["critique"], typed)}
               for p, _, y, verdict in own_samples(pair, rows, sizes, seed, "critic")]
        return datasets.Dataset.from_list(out, features=conv.features)

    def load(self, model_or_path):
        return load_pair(model_or_path)

    def prompt_example(self, row: dict) -> dict:
        """A generation prompt from a `data.to_sft` row: everything but the completion."""
        return {c: v for c, v in row.items() if c != "completion"}

    def respond(self, pair, subtask: str, examples: list[dict], sizes, seed: int) -> list[str]:
        """Greedy responses."""
        return llf.generate(*pair, examples, llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens),
                            batch_size=sizes.gen_batch_size, seed=seed)

    def sample(self, pair, subtask: str, examples: list[dict], sizes, seed: int) -> list[str]:
        """Responses at temperature 1, each seeded by (seed, its prompt and position)."""
        keys = [f"{llf.example_key(e)}#{i}:y" for i, e in enumerate(examples)]
        options = llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens, do_sample=True)
        return llf.generate(*pair, examples, options, batch_size=sizes.gen_batch_size, seed=seed, keys=keys)

    def critique_prompt(self, example: dict, response) -> dict:
        return llf.critique_example(example, response)

    def pair_response(self, pair: dict, side: str) -> str:
        """The response text of a preference pair's `side` ("chosen" / "rejected")."""
        content = pair[side][-1]["content"]
        return content if isinstance(content, str) else " ".join(c["text"] for c in content if c["type"] == "text")

    def refine(self, pair, subtask: str, examples: list[dict], ys: list, cs: list[str], sizes, seed: int) -> list:
        """Greedy y* (`respond`) on the refinement prompt [x, y, c]."""
        return self.respond(pair, subtask, [llf.refine_example(e, y, c) for e, y, c in zip(examples, ys, cs)],
                            sizes, seed)

    def improve(self, pol, fb, subtask: str, examples: list[dict], sizes, seed: int) -> list[dict]:
        """`llf.self_improve`: y sampled, c and y* greedy."""
        return llf.self_improve(pol[0], examples, fb[0], processor=pol[1], feedback_processor=fb[1],
                                policy_options=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens,
                                                                     do_sample=True),
                                feedback_options=llf.GenerationOptions(max_new_tokens=sizes.critique_tokens),
                                refine_options=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens),
                                batch_size=sizes.gen_batch_size, seed=seed)

    def same(self, a, b) -> bool:
        return a == b

    def show(self, response):
        return response

    def answer(self, item, faults, rng, cfg):
        from aa_lib.mini.respondents import respond_text

        return respond_text(item, faults, rng, cfg)

    def trainer_kw(self, sizes) -> dict:
        return {"max_length": sizes.max_length}

    def dpo(self, subtask: str, policy, pairs, out_dir, sizes, seed: int, profile: str) -> Path:
        from aa_lib.presets import make_config
        from aa_lib.train.dpo import train_dpo

        cfg = make_config("dpo", subtask, out_dir, profile, max_steps=sizes.dpo_steps,
                          learning_rate=sizes.dpo_lr, per_device_train_batch_size=sizes.batch_size,
                          max_length=sizes.max_length, seed=seed, data_seed=seed, **quiet(logging_steps=1))
        return train_dpo(cfg, policy, pairs)

    def synthesize(self, policy, feedback, align_rows, out_dir, target_size: int, sizes, seed: int):
        cfg = synthesis_config(out_dir, target_size, sizes, seed)
        try:
            critic = feedback if feedback is None or llf.is_critic(feedback) else str(feedback)
            return llf.synthesize_preferences(cfg, str(policy), data.to_prompts(align_rows), critic)
        except ValueError as e:
            if "was dropped" not in str(e):
                raise
            return None

    def ppo(self, subtask: str, policy, reward_pairs, prompts, out_dir, sizes, seed: int,
            profile: str) -> tuple[Path, Path]:
        from aa_lib.presets import make_config
        from aa_lib.train.ppo import train_ppo
        from aa_lib.train.reward import load_reward_model, train_reward

        out_dir = Path(out_dir)
        rc = make_config("reward_model", subtask, out_dir / "reward", profile, max_steps=sizes.reward_steps,
                         per_device_train_batch_size=sizes.batch_size, max_length=sizes.max_length, seed=seed,
                         data_seed=seed, **quiet())
        rm_path = train_reward(rc, policy, reward_pairs)
        reward_model, _ = load_reward_model(rm_path)
        batch = None if sizes.batch_size is None else min(8, sizes.batch_size)  # None: the preset's (paper)
        pc = make_config("ppo", subtask, out_dir / "policy", profile, total_episodes=sizes.ppo_episodes,
                         learning_rate=sizes.ppo_lr,
                         per_device_train_batch_size=batch, num_mini_batches=1,
                         response_length=sizes.max_new_tokens, max_length=sizes.max_length, seed=seed, data_seed=seed,
                         **quiet())
        return train_ppo(pc, policy, reward_model, prompts), rm_path


def synthesis_config(out_dir, target_size: int, sizes, seed: int) -> llf.SynthesisConfig:
    """The text synthesis of the experiments: y sampled, c and y* greedy, up to 4 samples per prompt."""
    return llf.SynthesisConfig(
        output_dir=str(out_dir), target_size=target_size, max_rounds=4, batch_size=sizes.gen_batch_size, seed=seed,
        policy_generation=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens, do_sample=True),
        feedback_generation=llf.GenerationOptions(max_new_tokens=sizes.critique_tokens),
        refine_generation=llf.GenerationOptions(max_new_tokens=sizes.max_new_tokens))


# ---------------------------------------------------------------------------------------------------- image
def _png(image) -> bytes:
    """PNG bytes of an image (PIL, array, PNG bytes or a datasets {"bytes","path"} value)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, dict):
        image = load_image(image)
    return encode_png(np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image))


def _n_images(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image")


def prompt_of(ex: dict) -> dict:
    """A generation prompt (`prompt` + its own images) from an example whose `images` may also hold responses."""
    prompt = list(ex["prompt"])
    n = _n_images(prompt)
    return {"prompt": prompt, "images": [_png(im) for im in (ex.get("images") or [])[:n]]}


def image_turn(text: str | None = None) -> dict:
    """An assistant turn with a response image (ti2ti: its text first, as `data.to_sft` lays it out)."""
    parts = [] if text is None else [{"type": "text", "text": text}]
    return {"role": "assistant", "content": parts + [{"type": "image", "text": None}]}


def _user_turn(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _split(response) -> tuple[str | None, np.ndarray]:
    """(text or None, image) of a response: an image (t2i) or {"text", "image"} (ti2ti)."""
    return (response["text"], response["image"]) if isinstance(response, dict) else (None, response)


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


def _respond(model, proc, subtask: str, examples: list[dict], seed: int, temperature: float, sizes) -> list:
    """Policy responses (`image_policy.generate_responses`): t2i images, ti2ti {"text", "image"}."""
    from aa_lib.image_policy import generate_responses

    return generate_responses(model, proc, examples, seed=seed, temperature=temperature,
                              max_new_tokens=sizes.max_new_tokens, batch_size=sizes.gen_batch_size, subtask=subtask)


def _with_response(ex: dict, y, request: str) -> dict:
    """[x, assistant y (image turn), user `request`] with y's image after the prompt's images."""
    text, image = _split(y)
    return {"prompt": list(ex["prompt"]) + [image_turn(text), _user_turn(request)],
            "images": list(ex["images"]) + [encode_png(image)]}


def _sample(model, proc, subtask: str, examples: list[dict], keys: list[str], seed: int, sizes) -> list:
    """Responses sampled at temperature 1, each seeded by (seed, its key) so that a resumed synthesis draws what
    the uninterrupted one drew: t2i in batches (a row's sample does not depend on its batch); ti2ti one prompt at a
    time, as `generate_texts` seeds by position."""
    from aa_lib.llf.generation import seed_of
    from aa_lib.models import janus_decode_images
    from aa_lib.train.image_output import generation_batch, prompt_example, sample_image_codes

    if subtask != "t2i":
        return [_respond(model, proc, subtask, [e], seed_of(seed, k) % 2**31, 1.0, sizes)[0]
                for e, k in zip(examples, keys)]
    images, batch = [], sizes.gen_batch_size
    for s in range(0, len(examples), batch):
        chunk = [prompt_example(e, i) for i, e in enumerate(examples[s:s + batch])]
        gens = [torch.Generator().manual_seed(seed_of(seed, k)) for k in keys[s:s + batch]]
        c = sample_image_codes(model, generation_batch(model, proc, chunk), gens, 1.0)
        images += [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in janus_decode_images(model, proc, c)]
    return images


def improve_images(policy, proc, feedback, fproc, subtask: str, examples: list[dict], keys: list[str], sizes,
                   seed: int) -> list[dict]:
    """Self-improvement of image responses (SPEC §3.2): y ~ policy(x) at temperature 1; c = feedback(x, y) greedy;
    y* = greedy response of the policy to (x, y, c). Returns dicts y, c, c_finished, y_star (responses: t2i images,
    ti2ti {"text", "image"})."""
    ys = _sample(policy, proc, subtask, examples, [k + ":y" for k in keys], seed, sizes)
    cs = llf.critiques(feedback, fproc, examples, ys, llf.GenerationOptions(max_new_tokens=sizes.critique_tokens),
                       sizes.gen_batch_size, seed, [k + ":c" for k in keys],
                       lambda e, y: _with_response(e, y, data.CRITIQUE_REQUEST))
    refine = [_with_response(e, y, llf.REFINE_TEMPLATE.format(critique=c.text)) for e, y, c in zip(examples, ys, cs)]
    stars = _respond(policy, proc, subtask, refine, seed, 0, sizes)
    return [{"y": y, "c": c.text, "c_finished": c.finished, "y_star": s} for y, c, s in zip(ys, cs, stars)]


@dataclass
class ResponseImageCollator:
    """Reward-model rows for image responses: [user x (+ images), assistant image] rendered whole (the response
    image read through Janus's understanding path); pairs -> chosen rows then rejected rows."""

    processor: object

    def __post_init__(self):
        from aa_lib.collators import PromptCollator

        self.inner = PromptCollator(self.processor, "janus")

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
                if ex.get("prompt") is not None:
                    msgs = list(ex["prompt"]) + msgs
                n_prompt = _n_images(msgs) - 1
                convs[side].append((msgs, list(ex.get("images") or [])[:n_prompt] + list(ex[f"{side}_images"])))
        return self.rows(convs["chosen"] + convs["rejected"])


def reward_fn_of(reward_path):
    """reward_fn(examples, images) -> scores of a reward model folder, for `image_output.train_image_ppo`."""
    from aa_lib.train.reward import load_reward_model

    rm, proc = load_reward_model(reward_path)
    coll = ResponseImageCollator(proc)

    def fn(examples: list[dict], images: list[np.ndarray]) -> list[float]:
        convs = []
        for ex, im in zip(examples, images):
            p = prompt_of(ex)
            text = ex["completion"][0]["content"][0]["text"] if ex.get("completion") else None
            convs.append((p["prompt"] + [image_turn(text)], p["images"] + [encode_png(im)]))
        with torch.no_grad():
            return [float(v) for v in rm(**coll.rows(convs))]

    return fn


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
        row = {"prompt": p["prompt"], "chosen": [image_turn(r["y_star_text"])], "rejected": [image_turn(r["y_text"])],
               "chosen_images": [png(r["y_star"])], "rejected_images": [png(r["y"])]}
        if subtask == "ti2ti":
            row["images"] = [{"bytes": b, "path": None} for b in p["images"]]
        rows.append(row)
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(feats))
    write_folder_atomic(out / "dataset", lambda tmp: ds.save_to_disk(str(tmp)))
    return datasets.load_from_disk(str(out / "dataset"))


class ImagePolicy:
    """A tiny Janus that answers with an image (t2i) or a text and an image (ti2ti), trained with aa_lib's
    image-output trainers (`aa_lib.train.image_output`) on the VQ codes of its images."""

    family = "janus"

    def start(self, subtask: str, out_dir, seed: int, sizes) -> Path:
        """The tiny Janus of `seed` carrying the shared fitted VQ (`image_policy.start_model`, cached), copied."""
        from aa_lib.image_policy import start_model

        start = start_model(seed, budget=sizes.vq_budget)
        return write_folder_atomic(out_dir, lambda tmp: shutil.copytree(start, tmp, dirs_exist_ok=True))

    def sft_examples(self, subtask: str, rows, sizes, seed: int) -> list[dict]:
        from aa_lib.image_policy import budget_settings

        n_train = budget_settings(sizes.vq_budget, subtask)["n_train"]
        return policy_sft_rows(subtask, rows, n_train, sizes.refine_share, seed)

    def train_sft(self, start, examples, out_dir, sizes, seed: int) -> Path:
        from aa_lib.train.image_output import ImageSFTConfig, train_image_sft

        cfg = ImageSFTConfig(output_dir=str(out_dir), max_steps=sizes.sft_steps, learning_rate=sizes.sft_lr,
                             per_device_train_batch_size=sizes.batch_size, lr_scheduler_type="cosine",
                             warmup_steps=min(10, sizes.sft_steps // 10), weight_decay=0.0, seed=seed,
                             data_seed=seed, **quiet())
        return train_image_sft(cfg, start, examples)

    def load(self, model_or_path):
        return load_pair(model_or_path, family="janus")

    def prompt_example(self, row: dict) -> dict:
        """Prompts only: `data.to_sft`'s `images` also holds the response image."""
        return prompt_of(row)

    def respond(self, pair, subtask: str, examples: list[dict], sizes, seed: int) -> list:
        """Greedy images (temperature 0; ti2ti: text, then the image)."""
        return _respond(*pair, subtask, examples, seed, 0, sizes)

    def sample(self, pair, subtask: str, examples: list[dict], sizes, seed: int) -> list:
        keys = [f"{llf.example_key(e)}#{i}:y" for i, e in enumerate(examples)]
        return _sample(*pair, subtask, examples, keys, seed, sizes)

    def critique_prompt(self, example: dict, response) -> dict:
        return _with_response(example, response, data.CRITIQUE_REQUEST)

    def pair_response(self, pair: dict, side: str):
        """The response of a preference pair's `side`: its image (ti2ti: {"text", "image"})."""
        image = np.asarray(load_image(pair[f"{side}_images"][-1]).convert("RGB"))
        texts = [c["text"] for c in pair[side][-1]["content"] if c["type"] == "text"]
        return {"text": texts[0], "image": image} if texts else image

    def refine(self, pair, subtask: str, examples: list[dict], ys: list, cs: list[str], sizes, seed: int) -> list:
        refine = [_with_response(e, y, llf.REFINE_TEMPLATE.format(critique=c)) for e, y, c in zip(examples, ys, cs)]
        return _respond(*pair, subtask, refine, seed, 0, sizes)

    def train_reading(self, plain, rows, out_dir, sizes, seed: int) -> Path:
        raise ValueError("reading_steps > 0: the image policies learn to act on a critique in their one SFT stage "
                         "(refinement examples with canonical targets, `policy_sft_rows`); set reading_steps=0")

    def critic_examples(self, pair, rows, sizes, seed: int):
        """The shared critic's (x, y, c): the rows' own responses (the mini world's drawings) and their annotated
        critiques. Not the policy's samples: thousands of sampled images do not fit `make figures`' budget."""
        return rows

    def improve(self, pol, fb, subtask: str, examples: list[dict], sizes, seed: int) -> list[dict]:
        keys = [f"{llf.example_key(e)}#{i}" for i, e in enumerate(examples)]
        return improve_images(*pol, *fb, subtask, examples, keys, sizes, seed)

    def same(self, a, b) -> bool:
        """Equal text and equal pixels."""
        (ta, ia), (tb, ib) = _split(a), _split(b)
        return ta == tb and np.array_equal(np.asarray(ia), np.asarray(ib))

    def show(self, response) -> dict:
        """The rubric checker's reading of the image (+ the text for ti2ti), JSON-serializable."""
        text, image = _split(response)
        r = json.loads(json.dumps(mini.read_image(image), default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        return r if text is None else {"text": text, "image": r}

    def answer(self, item, faults, rng, cfg):
        """A respondent's drawing (`respond_scene` + render; ti2ti: with its text)."""
        from aa_lib.mini.respondents import respond_scene, respond_ti2ti_text

        image = mini.render_scene(respond_scene(item, faults, rng, cfg), cfg.image_size)
        return {"text": respond_ti2ti_text(item, faults, rng), "image": image} if item["subtask"] == "ti2ti" else image

    def trainer_kw(self, sizes) -> dict:
        return {}

    def dpo(self, subtask: str, policy, pairs, out_dir, sizes, seed: int, profile: str) -> Path:
        """Image DPO (`image_output.train_image_dpo`) on preference pairs with chosen_images / rejected_images."""
        from aa_lib.presets import get_preset
        from aa_lib.train.image_output import ImageDPOConfig, train_image_dpo

        p = get_preset("dpo", subtask, profile)
        steps = {"num_train_epochs": p.epochs} if sizes.dpo_steps is None else {"max_steps": sizes.dpo_steps}
        cfg = ImageDPOConfig(output_dir=str(out_dir), learning_rate=sizes.dpo_lr or p.learning_rate,
                             lr_scheduler_type=p.scheduler, beta=p.beta,
                             per_device_train_batch_size=sizes.batch_size or p.per_device_batch_size,
                             weight_decay=p.weight_decay, seed=seed, data_seed=seed, **steps, **quiet(logging_steps=1))
        return train_image_dpo(cfg, policy, pairs)

    def synthesize(self, policy, feedback, align_rows, out_dir, target_size: int, sizes, seed: int):
        """Synthesized image pairs (chosen y*, rejected y), in `to_preference`'s layout (chosen_images /
        rejected_images). Resumable like `llf.synthesize_preferences`: items (round, prompt) in a fixed order, each
        batch's images written as PNG under out_dir/images/ and its records appended to synthesis.jsonl before the
        next batch; a rerun skips finished items. Pairs whose critique was cut at `critique_tokens` ("over_length")
        or whose y* equals y ("identical") are dropped."""
        from aa_lib.llf.synthesis import SHARD, check_meta, item_id, read_shard, run_items, write_report

        subtask = get_subtask(align_rows.info.config_name).name
        out = Path(out_dir)
        (out / "images").mkdir(parents=True, exist_ok=True)
        prompts = data.to_prompts(align_rows)
        P = [prompt_of(prompts[i]) for i in range(len(prompts))]
        if not P:
            raise ValueError("synthesize: no prompts")
        check_meta(out, {"seed": seed, "policy": str(policy),
                         "feedback_model": None if feedback is None else
                         feedback.name if llf.is_critic(feedback) else str(feedback),
                         "generation": {"y": "temperature 1", "c": f"greedy, {sizes.critique_tokens} tokens",
                                        "y_star": "greedy"}})
        done = read_shard(out / SHARD)
        resumed = len(done)
        keys = [llf.example_key(p) for p in P]
        order = [(r, i, item_id(keys[i], r, seed)) for r in range(4) for i in range(len(P))]  # up to 4 per prompt
        models = None

        def make_records(batch):
            nonlocal models
            if models is None:
                pol = self.load(policy)
                fb = pol if feedback is None else (feedback, None) if llf.is_critic(feedback) else self.load(feedback)
                models = (*pol, *fb)
            res = improve_images(*models, subtask, [P[i] for _, i, _ in batch], [iid for _, _, iid in batch], sizes,
                                 seed)
            records = []
            for (r, i, iid), x in zip(batch, res):
                rec = {"id": iid, "prompt_index": i, "sample_index": r, "c": x["c"], "c_finished": x["c_finished"]}
                for side in ("y", "y_star"):
                    text, image = _split(x[side])
                    rec[side] = f"images/{iid}_{side}.png"
                    rec[f"{side}_text"] = text
                    write_bytes_atomic(out / rec[side], encode_png(image))
                rec["reason"] = ("over_length: c cut at critique_tokens" if not x["c_finished"] else
                                 "identical: y* equals y" if self.same(x["y"], x["y_star"]) else None)
                rec["kept"] = rec["reason"] is None
                records.append(rec)
            return records

        generated = run_items(out / SHARD, done, order, target_size, sizes.gen_batch_size, make_records)
        keep, _ = write_report(out, [done[iid] for _, _, iid in order if iid in done], target_size, resumed,
                               generated)
        if not keep:
            return None
        return _save_pairs(out, [P[r["prompt_index"]] for r in keep], keep, subtask)

    def train_reward(self, subtask: str, policy, reward_pairs, out_dir, sizes, seed: int, profile: str) -> Path:
        """A Bradley-Terry reward model (`train.reward.RewardModel`) on the policy's backbone over (x, y image)."""
        from aa_lib.presets import make_config
        from aa_lib.train.common import as_dataset, load_for_training
        from aa_lib.train.reward import MultimodalRewardTrainer, RewardModel

        cfg = make_config("reward_model", subtask, out_dir, profile, max_steps=sizes.reward_steps,
                          per_device_train_batch_size=sizes.batch_size, seed=seed, data_seed=seed, **quiet())
        cfg.remove_unused_columns = False
        model, proc, family = load_for_training(policy, cfg)
        torch.manual_seed(seed)
        rm = RewardModel(model, family)
        trainer = MultimodalRewardTrainer(model=rm, args=cfg, train_dataset=as_dataset(reward_pairs),
                                          data_collator=ResponseImageCollator(proc), processing_class=proc)
        trainer.train()
        return rm.save(out_dir, proc, source_path=policy)

    def ppo(self, subtask: str, policy, reward_pairs, prompts, out_dir, sizes, seed: int,
            profile: str) -> tuple[Path, Path]:
        """A reward model, then image PPO (`image_output.train_image_ppo`) with its score as the reward:
        `ppo_episodes` prompts in iterations of `ppo_prompts`, `ppo_samples` images each."""
        from aa_lib.presets import get_preset
        from aa_lib.train.image_output import ImagePPOConfig, train_image_ppo

        out_dir = Path(out_dir)
        rm_path = self.train_reward(subtask, policy, reward_pairs, out_dir / "reward", sizes, seed, profile)
        p = get_preset("ppo", subtask, profile)
        episodes = sizes.ppo_episodes or p.epochs * len(prompts)  # None (profile paper): the preset's epochs
        cfg = ImagePPOConfig(output_dir=str(out_dir / "policy"), learning_rate=sizes.ppo_lr or p.learning_rate,
                             num_iterations=max(1, episodes // sizes.ppo_prompts),
                             prompts_per_iteration=sizes.ppo_prompts, samples_per_prompt=sizes.ppo_samples, seed=seed)
        examples = [prompt_of(prompts[i]) for i in range(len(prompts))]
        if subtask == "ti2ti":  # PPO moves the image codes; the response text is the policy's greedy text, kept fixed
            from aa_lib.image_policy import generate_texts

            model, proc = self.load(policy)
            texts = generate_texts(model, proc, examples, seed=seed, max_new_tokens=sizes.max_new_tokens,
                                   batch_size=sizes.gen_batch_size)
            examples = [{**e, "completion": [image_turn(t)]} for e, t in zip(examples, texts)]
        return train_image_ppo(cfg, policy, examples, reward_fn_of(rm_path)), rm_path
