"""Table 2 benchmarks read from their published local file formats, scored with their protocols (SPEC §6).

Nothing can be fetched here: each loader reads the files a user has downloaded. The judge prompts are written
for this project after each benchmark's published protocol (what the judge sees, its scale, its answer format):
- LLaVA-Bench (COCO): the judge rates the reference (GPT-4) answer and the candidate 1-10 on one line; the result
  is the relative score 100 * mean(candidate) / mean(reference), per category and overall.
- MIA-Bench: the judge scores each weighted sub-instruction and a total out of 10; the score is 100 * mean total/10.
- Video-ChatGPT: five dimensions (correctness, detail, context, temporal, consistency), each judged 0-5; the
  result is the mean per dimension.
- AIR-Bench (chat): the judge rates the reference answer and the candidate 1-10; the result is the candidate's mean.
InterleavedBench is not covered (its file format could not be confirmed offline).
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from aa_lib.judges import JudgeRequest, JudgeResult


@dataclass(frozen=True)
class BenchItem:
    id: str
    question: str  # the prompt / instruction shown to the evaluated model
    media: tuple[str, ...] = ()  # image / video / audio paths
    reference: str | None = None  # the reference answer, where the benchmark has one
    category: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # benchmark-specific fields (components, context, ...)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
    return rows


def _need(row: dict, key: str, where: str):
    if key not in row:
        raise ValueError(f"{where}: missing field {key!r}")
    return row[key]


def _media(base: str | os.PathLike | None, name: str, where: str, check_files: bool) -> str:
    full = name if base is None or os.path.isabs(name) or "://" in name else str(Path(base) / name)
    if check_files and not os.path.isfile(full):
        raise ValueError(f"{where}: media file not found: {full}")
    return full


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


_TWO_SCORES_REASK = "Please output only the two scores (1-10) for Assistant 1 and Assistant 2 on the first line, " \
                    "separated by a space, then your explanation."

# ---------------------------------------------------------------------------------------------------------------
# LLaVA-Bench (COCO)
# ---------------------------------------------------------------------------------------------------------------


def load_llava_bench(
    questions: str | os.PathLike, answers: str | os.PathLike, context: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None, *, check_files: bool = True,
) -> list[BenchItem]:
    """`questions.jsonl` (question_id, image, text, category), the reference `answers_gpt4.jsonl` (question_id,
    text) and optionally `caps_boxes_coco2014_val_80.jsonl` (image, caption, instances) shown to the judge."""
    refs = {}
    for i, row in enumerate(_read_jsonl(Path(answers))):
        refs[str(_need(row, "question_id", f"{answers}: line {i + 1}"))] = _need(row, "text", f"{answers}: line {i+1}")
    ctx = {}
    if context is not None:
        for i, row in enumerate(_read_jsonl(Path(context))):
            where = f"{context}: line {i + 1}"
            caps = _need(row, "caption", where)
            boxes = [f"{b['category']}: {b['bbox']}" for b in row.get("instances", [])]
            ctx[_need(row, "image", where)] = "\n".join(list(caps) + ([""] + boxes if boxes else []))
    items = []
    for i, row in enumerate(_read_jsonl(Path(questions))):
        where = f"{questions}: line {i + 1}"
        qid = str(_need(row, "question_id", where))
        if qid not in refs:
            raise ValueError(f"{where} (question_id {qid}): no reference answer in {answers}")
        image = _need(row, "image", where)
        if context is not None and image not in ctx:
            raise ValueError(f"{where} (question_id {qid}): no context for image {image!r} in {context}")
        items.append(BenchItem(
            id=qid, question=_need(row, "text", where), media=(_media(image_dir, image, where, check_files),),
            reference=refs[qid], category=_need(row, "category", where), extra={"context": ctx.get(image, "")},
        ))
    return items


LLAVA_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
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
    return JudgeRequest(user=user, system=LLAVA_SYSTEM, parser=_two_scores, reask_prompt=_TWO_SCORES_REASK)


def llava_relative_scores(items: Sequence[BenchItem], results: Sequence[JudgeResult]) -> dict[str, float]:
    """100 * mean(candidate) / mean(reference), per category and 'all' (failed reviews are left out)."""
    pairs = defaultdict(list)
    for it, res in zip(items, results, strict=True):
        if res.ok:
            pairs[it.category].append(res.score)
            pairs["all"].append(res.score)
    return {c: 100 * sum(b for _, b in v) / sum(a for a, _ in v) for c, v in pairs.items()}


# ---------------------------------------------------------------------------------------------------------------
# MIA-Bench
# ---------------------------------------------------------------------------------------------------------------


def load_mia_bench(path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
                   check_files: bool = False) -> list[BenchItem]:
    """`instruction_benchmark_all.json`: image (URL or file name), instruction, type, components, component_weight.

    Images are often COCO URLs; with `image_dir` the URL's file name is looked up there.
    """
    items = []
    for i, row in enumerate(_read_json(Path(path))):
        where = f"{path}: entry {i}"
        comps, weights = _need(row, "components", where), _need(row, "component_weight", where)
        if len(comps) != len(weights) or not comps:
            raise ValueError(f"{where}: field 'component_weight': {len(weights)} weights for {len(comps)} components")
        if abs(sum(weights) - 10) > 1e-6:
            raise ValueError(f"{where}: field 'component_weight': weights sum to {sum(weights)}, not 10")
        image = _need(row, "image", where)
        if image_dir is not None:
            image = _media(image_dir, image.rsplit("/", 1)[-1], where, check_files)
        items.append(BenchItem(id=str(row.get("id", i)), question=_need(row, "instruction", where), media=(image,),
                               category=row.get("type"),
                               extra={"components": list(comps), "weights": list(weights),
                                      "component_type": row.get("component_type")}))
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
                        reask_prompt=f"Please answer in the required format first: {fmt}, total score: z/10.")


def parse_mia_total(text: str) -> float | None:
    """The 'total score: z/10' of a MIA-Bench review, as a fraction in [0, 1]."""
    m = re.search(r"total score\s*:\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", text or "", flags=re.I)
    if not m or float(m.group(2)) <= 0:
        return None
    value = float(m.group(1)) / float(m.group(2))
    return value if 0 <= value <= 1 else None


def mia_score(results: Iterable[JudgeResult]) -> float:
    """100 * the mean total fraction over the reviewed items."""
    totals = [r.score for r in results if r.ok]
    if not totals:
        raise ValueError("MIA-Bench: no item was scored")
    return 100 * sum(totals) / len(totals)


# ---------------------------------------------------------------------------------------------------------------
# Video-ChatGPT (quantitative evaluation)
# ---------------------------------------------------------------------------------------------------------------

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


def load_video_chatgpt(path: str | os.PathLike, video_dir: str | os.PathLike | None = None, *,
                       video_ext: str = ".mp4", check_files: bool = False) -> list[BenchItem]:
    """`generic_qa.json` / `temporal_qa.json` (Q, A, video_name) or `consistency_qa.json` (Q1, Q2, A, video_name)."""
    items = []
    for i, row in enumerate(_read_json(Path(path))):
        where = f"{path}: entry {i}"
        name = _need(row, "video_name", where)
        video = _media(video_dir, name if Path(name).suffix else name + video_ext, where, check_files)
        if "Q1" in row:
            items.append(BenchItem(id=str(i), question=row["Q1"], media=(video,), reference=_need(row, "A", where),
                                   category="consistency", extra={"Q2": _need(row, "Q2", where)}))
        else:
            items.append(BenchItem(id=str(i), question=_need(row, "Q", where), media=(video,),
                                   reference=_need(row, "A", where)))
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
    return JudgeRequest(user=user, system=system, parser=_dict_score,
                        reask_prompt="Reply only with the dictionary, e.g. {'score': 3}.")


def video_chatgpt_scores(results: dict[str, Sequence[JudgeResult]]) -> dict[str, float]:
    """Mean score per dimension (0-5) and their mean ('mean')."""
    out = {}
    for dim, res in results.items():
        scored = [r.score for r in res if r.ok]
        if not scored:
            raise ValueError(f"Video-ChatGPT: no item was scored for {dim!r}")
        out[dim] = sum(scored) / len(scored)
    out["mean"] = sum(out.values()) / len(out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# AIR-Bench (chat)
# ---------------------------------------------------------------------------------------------------------------


def load_air_bench_chat(meta: str | os.PathLike, audio_dir: str | os.PathLike | None = None, *,
                        check_files: bool = False) -> list[BenchItem]:
    """`Chat_meta.json`: uniq_id, task_name, dataset_name, path (the audio), question, answer_gt."""
    items = []
    for i, row in enumerate(_read_json(Path(meta))):
        where = f"{meta}: entry {i}"
        audio = _media(audio_dir, _need(row, "path", where), where, check_files)
        items.append(BenchItem(id=str(row.get("uniq_id", i)), question=_need(row, "question", where),
                               media=(audio,), reference=_need(row, "answer_gt", where),
                               category=row.get("task_name"), extra={"meta_info": row.get("meta_info")}))
    return items


AIR_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."


def air_request(item: BenchItem, answer: str) -> JudgeRequest:
    meta = item.extra.get("meta_info")
    user = ((f"[Audio description]\n{meta}\n\n" if meta else "") + f"[Question]\n{item.question}\n\n"
            f"[Assistant 1]\n{item.reference}\n[End of Assistant 1]\n\n[Assistant 2]\n{answer}\n"
            "[End of Assistant 2]\n\nRate the usefulness, relevance, accuracy and comprehensiveness of both "
            "answers to the question about the audio, each from 1 to 10 (higher is better). Output a single line "
            "with the two scores separated by a space, then explain without bias from the order of the answers.")
    return JudgeRequest(user=user, system=AIR_SYSTEM, parser=_two_scores, reask_prompt=_TWO_SCORES_REASK)


def air_chat_score(results: Iterable[JudgeResult]) -> float:
    """The candidate's (Assistant 2's) mean score, 1-10."""
    scored = [r.score[1] for r in results if r.ok]
    if not scored:
        raise ValueError("AIR-Bench: no item was scored")
    return sum(scored) / len(scored)
