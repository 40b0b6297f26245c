"""Table 2 benchmarks read from their published local file formats, scored with their protocols (SPEC §6).

Nothing can be fetched here: each loader reads the files a user has downloaded. The judge prompts are written
for this project after each benchmark's published protocol (what the judge sees, its scale, its answer format):
- LLaVA-Bench (COCO): the judge rates the reference (GPT-4) answer and the candidate 1-10 on one line; the result
  is the relative score 100 * mean(candidate) / mean(reference), per category and overall.
- MIA-Bench: the judge scores each weighted sub-instruction and a total out of 10; the score is 100 * mean total/10.
- Video-ChatGPT: five dimensions (correctness, detail, context, temporal, consistency), each judged 0-5; the
  result is the mean per dimension.
- AIR-Bench (chat): the judge rates the reference answer and the candidate 1-10; the result is the candidate's mean.
- ImageReward / HPS v2: a learned preference model scores each (prompt, generated image); the result is the mean
  score over the benchmark's prompt file. Their packages and weights are the user's (see `load_image_scorer`).
- InterleavedBench: the judge rates an interleaved text-image output 1-5 on five aspects; the result is the mean
  per aspect and their mean. Its file format could not be confirmed offline: `load_interleaved_bench` reads a
  documented JSONL layout with a `column_map` for the real file's names.

Tiny profile: `mini_bench_items` turns align-anything-mini held-out prompts of each benchmark's subtask
(`MINI_BENCHMARKS`) into its items, `mini_bench_judge` is a `FunctionJudge` over the mini rubric answering in each
benchmark's format and scale, and `MiniImageScorer` is the t2i counterpart of ImageReward / HPS v2. The request
builders and scoring functions are the same at both profiles.
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, create_model, field_validator

from aa_lib.judges import FunctionJudge, JudgeRequest, JudgeResult
from aa_lib.records import RecordId, parse_record, read_json, read_jsonl


@dataclass(frozen=True)
class BenchItem:
    id: str
    question: str  # the prompt / instruction shown to the evaluated model
    media: tuple[str, ...] = ()  # image / video / audio paths
    reference: str | None = None  # the reference answer, where the benchmark has one
    category: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # benchmark-specific fields (components, context, ...)


def _media(base: str | os.PathLike | None, name: str, where: str, check_files: bool) -> str:
    full = name if base is None or os.path.isabs(name) or "://" in name else str(Path(base) / name)
    if check_files and not os.path.isfile(full):
        raise ValueError(f"{where}: media file not found: {full}")
    return full


def _records(path: str | os.PathLike, model, jsonl: bool) -> Iterator[tuple[int, str, Any]]:
    """(index, where, record) for each entry of a JSONL file or a JSON list, validated as the pydantic `model`."""
    for i, row in enumerate(read_jsonl(Path(path)) if jsonl else read_json(Path(path))):
        where = f"{path}: line {i + 1}" if jsonl else f"{path}: entry {i}"
        yield i, where, parse_record(model, row, where)


def _two_scores(text: str, low: float = 1, high: float = 10) -> tuple[float, float] | None:
    """The LLaVA / AIR-Bench review format: the first line holds the two assistants' scores ("8 9" or "8, 9")."""
    first = (text or "").strip().split("\n")[0].replace(",", " ").split()
    if len(first) < 2:
        return None
    try:
        a, b = float(first[0]), float(first[1])
    except ValueError:
        return None
    return (a, b) if low <= a <= high and low <= b <= high else None


def _scored(results: Iterable[JudgeResult], empty_error: str) -> list:
    """The scores of the reviews that succeeded (failed ones are left out); none raises `empty_error`."""
    scored = [r.score for r in results if r.ok]
    if not scored:
        raise ValueError(empty_error)
    return scored


_TWO_SCORES_REASK = "Please output only the two scores (1-10) for Assistant 1 and Assistant 2 on the first line, " \
                    "separated by a space, then your explanation."
REVIEW_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."  # LLaVA, AIR-Bench

# -------------------------------------------------------------------------------------------------- LLaVA-Bench (COCO)
# One pydantic model per record kind: the fields its file must have (other keys are ignored). A box's bbox is
# shown to the judge as the file writes it.
LlavaAnswerRecord = create_model("LlavaAnswerRecord", question_id=RecordId, text=str)
LlavaQuestionRecord = create_model("LlavaQuestionRecord", question_id=RecordId, image=str, text=str, category=str)
LlavaContextRecord = create_model("LlavaContextRecord", image=str, caption=list[str],
                                  instances=(list[create_model("LlavaBox", category=str, bbox=list)], []))


def load_llava_bench(questions: str | os.PathLike, answers: str | os.PathLike, context: str | os.PathLike | None = None,
                     image_dir: str | os.PathLike | None = None, *, check_files: bool = True) -> list[BenchItem]:
    """`questions.jsonl` (question_id, image, text, category), the reference `answers_gpt4.jsonl` (question_id,
    text) and optionally `caps_boxes_coco2014_val_80.jsonl` (image, caption, instances) shown to the judge."""
    refs = {}
    for _, _, r in _records(answers, LlavaAnswerRecord, jsonl=True):
        refs[r.question_id] = r.text
    ctx = {}
    if context is not None:
        for _, _, r in _records(context, LlavaContextRecord, jsonl=True):
            boxes = [f"{b.category}: {b.bbox}" for b in r.instances]
            ctx[r.image] = "\n".join(r.caption + ([""] + boxes if boxes else []))
    items = []
    for _, where, r in _records(questions, LlavaQuestionRecord, jsonl=True):
        if r.question_id not in refs:
            raise ValueError(f"{where} (question_id {r.question_id}): no reference answer in {answers}")
        if context is not None and r.image not in ctx:
            raise ValueError(f"{where} (question_id {r.question_id}): no context for image {r.image!r} in {context}")
        items.append(BenchItem(
            id=r.question_id, question=r.text, media=(_media(image_dir, r.image, where, check_files),),
            reference=refs[r.question_id], category=r.category, extra={"context": ctx.get(r.image, "")},
        ))
    return items


LLAVA_RULE = (
    "We would like your feedback on the performance of two AI assistants answering the user question about the "
    "image above, described by its captions and object boxes. Rate the helpfulness, relevance, accuracy and level "
    "of detail of their responses. Each assistant receives an overall score from 1 to 10; higher is better.\n"
    "Output a single line with the two scores for Assistant 1 and Assistant 2, separated by a space. Then, from "
    "the next line on, explain your evaluation without bias from the order of the responses."
)


def llava_request(item: BenchItem, answer: str) -> JudgeRequest:
    user = (f"[Context]\n{item.extra.get('context', '')}\n\n[Question]\n{item.question}\n\n"
            f"[Assistant 1]\n{item.reference}\n[End of Assistant 1]\n\n[Assistant 2]\n{answer}\n"
            f"[End of Assistant 2]\n\n[System]\n{LLAVA_RULE}\n")
    return JudgeRequest(user=user, system=REVIEW_SYSTEM, parser=_two_scores, reask_prompt=_TWO_SCORES_REASK,
                        meta={"item": item, "responses": (answer,)})


def llava_relative_scores(items: Sequence[BenchItem], results: Sequence[JudgeResult]) -> dict[str, float]:
    """100 * mean(candidate) / mean(reference), per category and 'all' (failed reviews are left out)."""
    pairs = defaultdict(list)
    for it, res in zip(items, results, strict=True):
        if res.ok:
            pairs[it.category].append(res.score)
            pairs["all"].append(res.score)
    return {c: 100 * sum(b for _, b in v) / sum(a for a, _ in v) for c, v in pairs.items()}


# ----------------------------------------------------------------------------------------------------------- MIA-Bench
class MIARecord(BaseModel):
    id: RecordId | None = None
    image: str
    instruction: str
    type: str | None = None
    components: list[str] = Field(min_length=1)
    component_weight: list[int | float]  # ints stay ints: the judge is shown "x/6", not "x/6.0"
    component_type: Any = None

    @field_validator("component_weight")
    @classmethod
    def _weights_fit(cls, weights: list, info: ValidationInfo) -> list:
        comps = info.data.get("components")
        if comps is not None and len(weights) != len(comps):
            raise ValueError(f"{len(weights)} weights for {len(comps)} components")
        if abs(sum(weights) - 10) > 1e-6:
            raise ValueError(f"weights sum to {sum(weights):g}, not 10")
        return weights


def load_mia_bench(path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
                   check_files: bool = False) -> list[BenchItem]:
    """`instruction_benchmark_all.json`: image (URL or file name), instruction, type, components, component_weight.

    Images are often COCO URLs; with `image_dir` the URL's file name is looked up there.
    """
    items = []
    for i, where, r in _records(path, MIARecord, jsonl=False):
        image = r.image if image_dir is None else _media(image_dir, r.image.rsplit("/", 1)[-1], where, check_files)
        items.append(BenchItem(id=r.id if r.id is not None else str(i), question=r.instruction, media=(image,),
                               category=r.type, extra={"components": r.components, "weights": r.component_weight,
                                                       "component_type": r.component_type}))
    return items


_ORDINAL = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def mia_request(item: BenchItem, response: str) -> JudgeRequest:
    comps, weights = item.extra["components"], item.extra["weights"]
    listed = "; ".join(f"the {_ORDINAL[k]} component is: '{c}' (worth {w} points)"
                       for k, (c, w) in enumerate(zip(comps, weights)))
    fmt = ", ".join(f"score of component {k + 1}: x/{w}" for k, w in enumerate(weights))
    user = (f"Here is an instruction for a multimodal LLM: '{item.question}'. Grade whether the model's response "
            f"follows each component of the instruction: {listed}. The response is: '{response}'. Be strict. The "
            f"total score ranges from 0 to 10. First list the score of each component and the total score in one "
            f"sentence in this format: {fmt}, total score: z/10. Then explain your reasons.")
    return JudgeRequest(user=user, media=item.media, parser=parse_mia_total,
                        reask_prompt=f"Please answer in the required format first: {fmt}, total score: z/10.",
                        meta={"item": item, "responses": (response,)})


def parse_mia_total(text: str) -> float | None:
    """The 'total score: z/10' of a MIA-Bench review, as a fraction in [0, 1]."""
    m = re.search(r"total score\s*:\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", text or "", flags=re.I)
    if not m or float(m.group(2)) <= 0:
        return None
    value = float(m.group(1)) / float(m.group(2))
    return value if 0 <= value <= 1 else None


def mia_score(results: Iterable[JudgeResult]) -> float:
    """100 * the mean total fraction over the reviewed items."""
    totals = _scored(results, "MIA-Bench: no item was scored")
    return 100 * sum(totals) / len(totals)


# ----------------------------------------------------------------------------- Video-ChatGPT (quantitative evaluation)
VIDEO_CHATGPT_DIMENSIONS = {
    "correctness": "the factual accuracy of the predicted answer compared with the correct answer",
    "detail": "how complete and detailed the predicted answer is: does it cover all major points of the correct "
              "answer with specific rather than generic information",
    "context": "whether the predicted answer agrees with the overall context and main themes of the video as "
               "shown by the correct answer",
    "temporal": "whether the predicted answer gets the temporal order of the events in the video right",
    "consistency": "whether the two predicted answers, given to two differently worded questions about the same "
                   "thing, agree with each other and with the correct answer",
}


VideoQARecord = create_model("VideoQARecord", video_name=str, Q=str, A=str)
VideoConsistencyRecord = create_model("VideoConsistencyRecord", video_name=str, Q1=str, Q2=str, A=str)


def load_video_chatgpt(path: str | os.PathLike, video_dir: str | os.PathLike | None = None, *,
                       video_ext: str = ".mp4", check_files: bool = False) -> list[BenchItem]:
    """`generic_qa.json` / `temporal_qa.json` (Q, A, video_name) or `consistency_qa.json` (Q1, Q2, A, video_name)."""
    items = []
    for i, row in enumerate(read_json(Path(path))):
        where = f"{path}: entry {i}"
        consistency = isinstance(row, dict) and "Q1" in row
        r = parse_record(VideoConsistencyRecord if consistency else VideoQARecord, row, where)
        name = r.video_name
        video = _media(video_dir, name if Path(name).suffix else name + video_ext, where, check_files)
        if consistency:
            items.append(BenchItem(id=str(i), question=r.Q1, media=(video,), reference=r.A, category="consistency",
                                   extra={"Q2": r.Q2}))
        else:
            items.append(BenchItem(id=str(i), question=r.Q, media=(video,), reference=r.A))
    return items


def _dict_score(text: str) -> float | None:
    m = re.search(r"['\"]?score['\"]?\s*:\s*(\d+(?:\.\d+)?)", text or "")
    if not m:
        return None
    value = float(m.group(1))
    return value if 0 <= value <= 5 else None


def video_chatgpt_request(item: BenchItem, prediction: str, dimension: str,
                          prediction2: str | None = None) -> JudgeRequest:
    if dimension not in VIDEO_CHATGPT_DIMENSIONS:
        raise ValueError(f"unknown Video-ChatGPT dimension {dimension!r}; one of {list(VIDEO_CHATGPT_DIMENSIONS)}")
    system = (f"You evaluate answers to questions about a video. Judge {VIDEO_CHATGPT_DIMENSIONS[dimension]}. "
              "Reply only with a Python dictionary string holding an integer score from 0 to 5 (5 is best), "
              "for example {'score': 3}.")
    if dimension == "consistency":
        if prediction2 is None or "Q2" not in item.extra:
            raise ValueError(f"item {item.id}: consistency needs the second question and prediction")
        user = (f"Question 1: {item.question}\nQuestion 2: {item.extra['Q2']}\nCorrect answer: {item.reference}\n"
                f"Predicted answer to question 1: {prediction}\nPredicted answer to question 2: {prediction2}")
    else:
        user = f"Question: {item.question}\nCorrect answer: {item.reference}\nPredicted answer: {prediction}"
    responses = (prediction,) if prediction2 is None else (prediction, prediction2)
    return JudgeRequest(user=user, system=system, parser=_dict_score,
                        reask_prompt="Reply only with the dictionary, e.g. {'score': 3}.",
                        meta={"item": item, "responses": responses, "dimension": dimension})


def video_chatgpt_scores(results: dict[str, Sequence[JudgeResult]]) -> dict[str, float]:
    """Mean score per dimension (0-5) and their mean ('mean')."""
    out = {}
    for dim, res in results.items():
        scored = _scored(res, f"Video-ChatGPT: no item was scored for {dim!r}")
        out[dim] = sum(scored) / len(scored)
    out["mean"] = sum(out.values()) / len(out)
    return out


# ---------------------------------------------------------------------------------------------------- AIR-Bench (chat)
AirChatRecord = create_model("AirChatRecord", path=str, question=str, answer_gt=str, uniq_id=(RecordId | None, None),
                             task_name=(str | None, None), meta_info=(Any, None))


def load_air_bench_chat(meta: str | os.PathLike, audio_dir: str | os.PathLike | None = None, *,
                        check_files: bool = False) -> list[BenchItem]:
    """`Chat_meta.json`: uniq_id, task_name, dataset_name, path (the audio), question, answer_gt."""
    items = []
    for i, where, r in _records(meta, AirChatRecord, jsonl=False):
        items.append(BenchItem(id=r.uniq_id if r.uniq_id is not None else str(i), question=r.question,
                               media=(_media(audio_dir, r.path, where, check_files),), reference=r.answer_gt,
                               category=r.task_name, extra={"meta_info": r.meta_info}))
    return items


def air_request(item: BenchItem, answer: str) -> JudgeRequest:
    meta = item.extra.get("meta_info")
    user = ((f"[Audio description]\n{meta}\n\n" if meta else "") + f"[Question]\n{item.question}\n\n"
            f"[Assistant 1]\n{item.reference}\n[End of Assistant 1]\n\n[Assistant 2]\n{answer}\n"
            "[End of Assistant 2]\n\nRate the usefulness, relevance, accuracy and comprehensiveness of both "
            "answers to the question about the audio, each from 1 to 10 (higher is better). Output a single line "
            "with the two scores separated by a space, then explain without bias from the order of the answers.")
    return JudgeRequest(user=user, system=REVIEW_SYSTEM, parser=_two_scores, reask_prompt=_TWO_SCORES_REASK,
                        meta={"item": item, "responses": (answer,)})


def air_chat_score(results: Iterable[JudgeResult]) -> float:
    """The candidate's (Assistant 2's) mean score, 1-10."""
    scored = [s[1] for s in _scored(results, "AIR-Bench: no item was scored")]
    return sum(scored) / len(scored)


# ----------------------------------------------------------- ImageReward and HPS v2 (learned image-preference scorers)
@runtime_checkable
class ImageScorer(Protocol):
    """Scores generated images against their prompts; higher is better."""

    def score(self, prompts: list[str], images: list) -> list[float]:  # images: PIL.Image.Image (or arrays)
        ...


class CallableImageScorer:
    """An `ImageScorer` over `fn(prompt, image) -> float`, one pair at a time (the published scorers' granularity)."""

    def __init__(self, fn: Callable[[str, Any], float], name: str = "scorer"):
        self.fn, self.name = fn, name

    def __repr__(self) -> str:
        return f"CallableImageScorer({self.name!r})"

    def score(self, prompts: list[str], images: list) -> list[float]:
        if len(prompts) != len(images):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(images)} images")
        out = []
        for i, (p, img) in enumerate(zip(prompts, images)):
            value = self.fn(p, img)
            if isinstance(value, (list, tuple)):  # ImageReward / hpsv2 may answer a list for one image
                if len(value) != 1:
                    raise ValueError(f"{self.name}: prompt {i} ({p!r}): {len(value)} scores for one image")
                value = value[0]
            out.append(float(value))
        return out


def load_image_scorer(model_path: str | os.PathLike, load: Callable[[str], Any],
                      score: Callable[[Any, str, Any], float] | None = None, *, name: str | None = None
                      ) -> CallableImageScorer:
    """An ImageReward / HPS v2 scorer from a local checkpoint and the user's own package (neither ships here).

    `load(model_path)` returns the model; each (prompt, image) is scored by `score(model, prompt, image)`, by
    default `model.score(prompt, image)`. With the published packages installed by the user:

        import ImageReward as RM                # ImageReward: a local ImageReward.pt plus its med_config.json
        scorer = load_image_scorer("ckpt/ImageReward.pt",
                                   lambda p: RM.load(p, device="cuda", med_config="ckpt/med_config.json"))
        import hpsv2                            # HPS v2: the checkpoint path is passed on each call
        scorer = load_image_scorer("ckpt/HPS_v2.1_compressed.pt", lambda p: p,
                                   lambda cp, prompt, img: hpsv2.score([img], prompt, cp=cp, hps_version="v2.1")[0])
    """
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"image scorer weights not found: {path} (download them yourself; nothing is "
                                "fetched here)")
    model = load(str(path))
    if score is None:
        if not callable(getattr(model, "score", None)):
            raise TypeError(f"{type(model).__name__} loaded from {path} has no score(prompt, image); pass score=")
        fn = model.score
    else:
        fn = functools.partial(score, model)
    return CallableImageScorer(fn, name=name or path.name)


def load_image_prompts(path: str | os.PathLike) -> list[str]:
    """A benchmark prompt file: a JSON list of prompts (HPS v2's per-style files) or of objects with a 'prompt'
    field (ImageReward's benchmark prompts)."""
    data = read_json(Path(path))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of prompts, got {type(data).__name__}")
    out = []
    for i, entry in enumerate(data):
        prompt = entry.get("prompt") if isinstance(entry, dict) else entry
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}: entry {i}: expected a non-empty prompt string (or an object with 'prompt')")
        out.append(prompt)
    return out


def image_preference_score(scorer: ImageScorer, prompts: Sequence[str], images: Sequence, *,
                           batch_size: int = 16) -> dict:
    """The ImageReward / HPS v2 protocol: the mean learned score of the generated images over the prompts.

    Returns {"mean", "n", "scores"}; a non-finite score raises, naming the prompt.
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    if not prompts:
        raise ValueError("no prompts to score")
    scores = []
    for start in range(0, len(prompts), batch_size):
        ps, ims = list(prompts[start:start + batch_size]), list(images[start:start + batch_size])
        got = [float(v) for v in scorer.score(ps, ims)]
        if len(got) != len(ps):
            raise ValueError(f"{scorer!r} returned {len(got)} scores for {len(ps)} images")
        for k, v in enumerate(got):
            if not np.isfinite(v):
                raise ValueError(f"prompt {start + k} ({ps[k]!r}): non-finite score {v}")
        scores += got
    return {"mean": float(np.mean(scores)), "n": len(scores), "scores": scores}


# ---------------------------------------------------------------------------------------------------- InterleavedBench
INTERLEAVED_ASPECTS = {
    "text_quality": "the clarity, fluency and correctness of the text",
    "perceptual_quality": "how natural and free of visual artifacts the generated images are",
    "image_coherence": "whether the images are consistent with each other in style and content",
    "text_image_coherence": "whether each image matches the text around it",
    "helpfulness": "how well the whole output fulfils the instruction",
}
INTERLEAVED_COLUMNS = ("id", "instruction", "input_images", "reference")
# One image path or a list of them; absent or null is none.
_ImagePaths = Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v or [])]


def load_interleaved_bench(path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
                           column_map: Mapping[str, str] | None = None, check_files: bool = False
                           ) -> list[BenchItem]:
    """InterleavedBench items from JSONL, one object per line (the layout this loader documents):

        {"id": "...", "instruction": "...", "input_images": ["a.png", ...],
         "reference": [{"text": "...", "image": "b.png" | null}, ...]}

    `reference` (the reference interleaved output) may also be a plain string. `column_map` maps these names to
    the file's own keys (e.g. {"instruction": "prompt"}); `input_images` and `reference` may be absent.
    """
    cmap = {c: c for c in INTERLEAVED_COLUMNS}
    unknown = set(column_map or {}) - set(cmap)
    if unknown:
        raise ValueError(f"column_map: unknown columns {sorted(unknown)}; known: {list(INTERLEAVED_COLUMNS)}")
    cmap.update(column_map or {})
    # The record model takes the file's own key names, so its errors name the field as the file spells it.
    record = create_model(
        "InterleavedRecord", id=(RecordId, Field(validation_alias=cmap["id"])),
        instruction=(str, Field(validation_alias=cmap["instruction"])),
        input_images=(_ImagePaths, Field([], validation_alias=cmap["input_images"])),
        reference=(Any, Field(None, validation_alias=cmap["reference"])))
    items = []
    for _, where, r in _records(path, record, jsonl=True):
        ref_where = f"{where}: field {cmap['reference']!r}"
        steps = None if r.reference is None else _interleaved_steps(r.reference, ref_where)
        items.append(BenchItem(
            id=r.id, question=r.instruction, reference=_interleaved_text(steps) if steps is not None else None,
            media=tuple(_media(image_dir, m, where, check_files) for m in r.input_images),
            extra={"reference_steps": steps}))
    return items


def _interleaved_steps(output, where: str) -> list[dict]:
    """Normalise an interleaved output to [{"text": str, "image": path | None}, ...]."""
    if isinstance(output, str):
        return [{"text": output, "image": None}]
    if not isinstance(output, list):
        raise ValueError(f"{where}: expected a string or a list of {{'text', 'image'}} steps")
    steps = []
    for k, step in enumerate(output):
        if isinstance(step, str):
            step = {"text": step}
        if not isinstance(step, dict) or not ({"text", "image"} & set(step)):
            raise ValueError(f"{where}: step {k}: expected an object with 'text' and/or 'image'")
        steps.append({"text": str(step.get("text") or ""), "image": step.get("image")})
    return steps


def _interleaved_text(steps: list[dict]) -> str:
    """The steps as text with numbered image placeholders (the images themselves go to the judge as media)."""
    parts, n = [], 0
    for s in steps:
        if s["text"]:
            parts.append(s["text"])
        if s["image"]:
            n += 1
            parts.append(f"<image {n}>")
    return "\n".join(parts)


def parse_interleaved_scores(text: str) -> dict[str, float] | None:
    """Per-aspect scores 1-5: a JSON object {"text_quality": 4, ...} or one `aspect: [[n]]` per aspect."""
    text = text or ""
    for m in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        norm = {str(k).strip().lower().replace(" ", "_").replace("-", "_"): v for k, v in obj.items()}
        if all(a in norm for a in INTERLEAVED_ASPECTS):
            try:
                out = {a: float(norm[a]) for a in INTERLEAVED_ASPECTS}
            except (TypeError, ValueError):
                return None
            return out if all(1 <= v <= 5 for v in out.values()) else None
    out = {}
    for aspect in INTERLEAVED_ASPECTS:
        pattern = aspect.replace("_", r"[\s_-]*")
        m = re.search(pattern + r"[^\[\n]*\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", text, flags=re.I)
        if not m or not 1 <= float(m.group(1)) <= 5:
            return None
        out[aspect] = float(m.group(1))
    return out


INTERLEAVED_SYSTEM = "You are a strict and precise evaluator of interleaved text-and-image generation."


def interleaved_request(item: BenchItem, output) -> JudgeRequest:
    """Ask the judge to rate an interleaved output (a string or [{"text", "image"}] steps) 1-5 on each aspect.

    The judge sees the input images, then the output's images, in that order (numbered in the prompt).
    """
    steps = _interleaved_steps(output, f"item {item.id}: output")
    out_images = tuple(str(s["image"]) for s in steps if s["image"])
    aspects = "\n".join(f"- {a}: {d}" for a, d in INTERLEAVED_ASPECTS.items())
    ref = f"[Reference output]\n{item.reference}\n\n" if item.reference else ""
    fmt = ", ".join(f'"{a}": n' for a in INTERLEAVED_ASPECTS)
    user = (f"[Instruction]\n{item.question}\n\n[Input images]\n{len(item.media)} image(s), shown first.\n\n{ref}"
            f"[Output to rate]\n{_interleaved_text(steps)}\n(its {len(out_images)} image(s) are shown after the "
            f"input images)\n\nRate the output from 1 to 5 (5 is best) on each aspect:\n{aspects}\n"
            f"Answer with a JSON object {{{fmt}}}, then explain briefly.")
    return JudgeRequest(user=user, system=INTERLEAVED_SYSTEM, media=tuple(item.media) + out_images,
                        parser=parse_interleaved_scores,
                        reask_prompt=f"Reply with only the JSON object {{{fmt}}}, each n from 1 to 5.",
                        meta={"item": item, "responses": (steps,)})


def interleaved_scores(results: Iterable[JudgeResult]) -> dict[str, float]:
    """Mean per aspect (1-5) over the reviewed items, and 'overall' (the mean of the aspect means)."""
    scored = _scored(results, "InterleavedBench: no item was scored")
    out = {a: sum(s[a] for s in scored) / len(scored) for a in INTERLEAVED_ASPECTS}
    out["overall"] = sum(out.values()) / len(INTERLEAVED_ASPECTS)
    return out


# ---------------------------------------------------------------------- Tiny profile: align-anything-mini counterparts
MINI_BENCHMARKS = {"llava": "ti2t", "mia": "ti2t", "video_chatgpt": "tv2t", "air": "ta2t",
                   "interleaved": "ti2ti"}  # benchmark -> mini subtask


def mini_fraction(meta, response, subtask: str) -> float:
    """The mini rubric's overall score of `response` normalised to [0, 1] (1 = every dimension at its best)."""
    from aa_lib.mini import rubric_score
    from aa_lib.mini.rubric import WEIGHTS
    from aa_lib.subtasks import get_subtask

    best = 3.0 * sum(WEIGHTS.get(d.name, 1.0) for d in get_subtask(subtask).dimensions)
    return rubric_score(meta, response, subtask)["overall"] / best


def mini_bench_items(benchmark: str, n: int, seed: int, media_dir: str | os.PathLike) -> list[BenchItem]:
    """`n` held-out mini prompts as items of `benchmark` (a key of `MINI_BENCHMARKS`); media are written
    under `media_dir` (atomically) and the prompt's hidden truth travels in `extra['mini_meta']` for the judge.

    The reference answer is the world's reference (the refusal for unsafe prompts); LLaVA items carry the
    prompt type as category and a text description of the image as context, like COCO captions.
    """
    from aa_lib.media import write_bytes_atomic
    from aa_lib.mini import heldout_prompts, media_bytes
    from aa_lib.mini.world import REFUSAL
    from aa_lib.subtasks import get_subtask

    if benchmark not in MINI_BENCHMARKS:
        raise ValueError(f"no mini counterpart for benchmark {benchmark!r}; one of {list(MINI_BENCHMARKS)}")
    st = get_subtask(MINI_BENCHMARKS[benchmark])
    items = []
    for row in heldout_prompts(st.name, n, seed):
        meta = json.loads(row["mini_meta"])
        value = row[st.media_column]
        path = Path(media_dir) / value["path"]
        if not path.exists():
            write_bytes_atomic(path, media_bytes(value))
        t = meta["truth"]
        extra = {"mini_meta": row["mini_meta"]}
        if benchmark == "llava":
            extra["context"] = f"An image of {t['count']} {t['color']} {t['shape']}(s) at the {t['position']}."
        elif benchmark == "air":
            extra["meta_info"] = None  # AIR-Bench shows no audio description to the judge for chat items
        elif benchmark == "mia":  # one component, the whole instruction, worth the 10 points
            extra.update(components=[row[st.prompt_column]], weights=[10], component_type=None)
        items.append(BenchItem(id=meta["id"], question=row[st.prompt_column], media=(str(path),),
                               reference=meta["reference"] or REFUSAL,
                               category=meta["prompt_type"] if benchmark == "llava" else None, extra=extra))
    return items


def _mini_ti2ti_answer(steps: list[dict]) -> dict:
    from PIL import Image

    images = [s["image"] for s in steps if s["image"]]
    image = np.asarray(Image.open(images[0]).convert("RGB")) if images else np.zeros((1, 1, 3), np.uint8)
    return {"text": " ".join(s["text"] for s in steps if s["text"]), "image": image}


def mini_bench_judge(benchmark: str) -> FunctionJudge:
    """A `FunctionJudge` over the mini rubric that answers like the benchmark's judge, in its scale and format.

    LLaVA / AIR: "<reference> <candidate>" on 1-10 (1 + 9 x the rubric fraction); Video-ChatGPT: {'score': s} on
    0-5 (5 x the fraction, the same for each dimension; the mini items have no second wording for consistency);
    MIA: "total score: z/10" (10 x the fraction); InterleavedBench: every aspect 1 + 4 x the fraction.
    It reads the item's `mini_meta` and the responses from `JudgeRequest.meta`, which the request builders set.
    """
    if benchmark not in MINI_BENCHMARKS:
        raise ValueError(f"no mini counterpart for benchmark {benchmark!r}; one of {list(MINI_BENCHMARKS)}")
    subtask = MINI_BENCHMARKS[benchmark]

    def review(req: JudgeRequest) -> str:
        if not req.meta or "mini_meta" not in req.meta["item"].extra:
            raise ValueError("the mini judge needs a request built from a mini item (no mini_meta in its meta)")
        item, responses = req.meta["item"], req.meta["responses"]
        meta = item.extra["mini_meta"]
        if benchmark == "interleaved":  # the rubric reads a ti2ti answer as {"text", "image"}: the steps joined
            responses = [_mini_ti2ti_answer(steps) for steps in responses]
        fracs = [mini_fraction(meta, r, subtask) for r in responses]
        if benchmark == "video_chatgpt":  # the mini items have one wording: every dimension is the rubric's view
            return f"{{'score': {5 * fracs[0]:.3f}}}"
        if benchmark == "mia":
            return f"score of component 1: {10 * fracs[0]:.3f}/10, total score: {10 * fracs[0]:.3f}/10"
        if benchmark == "interleaved":
            return json.dumps({a: round(1 + 4 * fracs[0], 3) for a in INTERLEAVED_ASPECTS})
        ref = mini_fraction(meta, item.reference, subtask)
        return f"{1 + 9 * ref:.3f} {1 + 9 * fracs[0]:.3f}\nscored by the align-anything-mini rubric"

    review.__qualname__ = f"mini_rubric[{benchmark}]"
    return FunctionJudge(review, score_range=(0, 10))


class MiniImageScorer:
    """The tiny profile's ImageReward / HPS v2: the mini rubric's t2i score in [0, 1] of each generated image.

    Built from held-out t2i prompts (`aa_lib.mini.heldout_prompts("t2i", n, seed)`), it looks each prompt's
    hidden truth up by its text; a prompt it was not built from raises.
    """

    def __init__(self, rows: Sequence[Mapping]):
        from aa_lib.subtasks import get_subtask

        col = get_subtask("t2i").prompt_column
        self.meta = {}
        for i, row in enumerate(rows):
            if "mini_meta" not in row:
                raise ValueError(f"row {i}: no 'mini_meta' (expected a held-out mini t2i prompt)")
            # A repeated prompt text keeps its first truth: the rubric checks what the prompt states (only its
            # shape-size threshold reads the hidden radius).
            self.meta.setdefault(row[col], row["mini_meta"])

    def __repr__(self) -> str:
        return f"MiniImageScorer({len(self.meta)} prompts)"

    def score(self, prompts: list[str], images: list) -> list[float]:
        if len(prompts) != len(images):
            raise ValueError(f"MiniImageScorer: {len(prompts)} prompts but {len(images)} images")
        out = []
        for i, (p, img) in enumerate(zip(prompts, images)):
            if p not in self.meta:
                raise KeyError(f"prompt {i} ({p!r}) is not one of this scorer's mini t2i prompts")
            out.append(mini_fraction(self.meta[p], np.asarray(img.convert("RGB") if hasattr(img, "convert")
                                                              else img), "t2i"))
        return out
