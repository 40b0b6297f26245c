"""Table 2 benchmark loaders on tiny synthetic files in the published formats, and their scoring protocols."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from aa_lib.benchmarks import (
    INTERLEAVED_ASPECTS,
    BenchItem,
    ImageScorer,
    MiniImageScorer,
    air_chat_score,
    air_request,
    image_preference_score,
    interleaved_request,
    interleaved_scores,
    llava_relative_scores,
    llava_request,
    load_air_bench_chat,
    load_image_prompts,
    load_image_scorer,
    load_interleaved_bench,
    load_llava_bench,
    load_mia_bench,
    load_video_chatgpt,
    mia_request,
    mia_score,
    mini_bench_items,
    mini_bench_judge,
    parse_interleaved_scores,
    parse_mia_total,
    video_chatgpt_request,
    video_chatgpt_scores,
)
from aa_lib.judges import FunctionJudge
from aa_lib.mini import heldout_prompts
from aa_lib.mini.render import render

torch.set_num_threads(1)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _llava_files(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "img" / name).write_bytes(b"\xff")
    q = _jsonl(tmp_path / "questions.jsonl", [
        {"question_id": 0, "image": "a.jpg", "text": "What colour is the bus?", "category": "conv"},
        {"question_id": 1, "image": "a.jpg", "text": "Describe the scene.", "category": "detail"},
        {"question_id": 2, "image": "b.jpg", "text": "Why is the man running?", "category": "complex"},
    ])
    a = _jsonl(tmp_path / "answers_gpt4.jsonl", [{"question_id": i, "text": f"reference {i}"} for i in range(3)])
    c = _jsonl(tmp_path / "caps.jsonl", [
        {"image": "a.jpg", "caption": ["A red bus on a street."],
         "instances": [{"category": "bus", "bbox": [0, 0, 1, 1]}]},
        {"image": "b.jpg", "caption": ["A man runs."], "instances": []},
    ])
    return q, a, c


def test_llava_bench_relative_score(tmp_path):
    q, a, c = _llava_files(tmp_path)
    items = load_llava_bench(q, a, c, tmp_path / "img")
    assert [i.category for i in items] == ["conv", "detail", "complex"]
    assert items[0].media == (str(tmp_path / "img/a.jpg"),) and "bus: [0, 0, 1, 1]" in items[0].extra["context"]

    # A reviewer that reads the two answers back: reference 8, candidate = the digit in its answer; "garbage" fails.
    def reviewer(req):
        cand = re.search(r"\[Assistant 2\]\n(.*)\n\[End of Assistant 2\]", req.user).group(1)
        return "no scores here" if cand == "garbage" else f"8 {cand}\nBoth are fine."

    judge = FunctionJudge(reviewer)
    results = judge.judge_batch([llava_request(it, ans) for it, ans in zip(items, ["6", "8", "garbage"])])
    assert results[0].score == (8.0, 6.0) and results[2].error.startswith("unparsable")
    rel = llava_relative_scores(items, results)
    assert rel == {"conv": 75.0, "detail": 100.0, "all": pytest.approx(87.5)}


def test_llava_bench_errors(tmp_path):
    q, a, c = _llava_files(tmp_path)
    _jsonl(a, [{"question_id": 0, "text": "r"}, {"question_id": 1, "text": "r"}])
    with pytest.raises(ValueError, match=r"questions.jsonl: line 3 \(question_id 2\): no reference answer"):
        load_llava_bench(q, a, c, tmp_path / "img")
    (tmp_path / "img" / "b.jpg").unlink()
    _jsonl(a, [{"question_id": i, "text": "r"} for i in range(3)])
    with pytest.raises(ValueError, match=r"line 3: media file not found: .*b\.jpg"):
        load_llava_bench(q, a, c, tmp_path / "img")



@pytest.mark.parametrize("file, line, change, message", [
    ("questions.jsonl", 2, lambda r: r.pop("category"), r"field 'category': Field required"),
    ("questions.jsonl", 3, lambda r: r.update(text=["two", "parts"]), r"field 'text': Input should be a valid string"),
    ("caps.jsonl", 1, lambda r: r["instances"][0].pop("bbox"), r"field 'instances\[0\]\.bbox': Field required"),
])
def test_benchmark_record_errors_name_file_record_and_field(tmp_path, file, line, change, message):
    files = dict(zip(("questions.jsonl", "answers_gpt4.jsonl", "caps.jsonl"), _llava_files(tmp_path)))
    rows = [json.loads(t) for t in files[file].read_text().splitlines()]
    change(rows[line - 1])
    _jsonl(files[file], rows)
    with pytest.raises(ValueError, match=rf"{re.escape(file)}: line {line}: {message}"):
        load_llava_bench(*files.values(), tmp_path / "img")

def test_mia_bench(tmp_path):
    rows = [
        {"image": "http://images.cocodataset.org/val2017/000000397133.jpg", "instruction": "Explain in two sentences.",
         "type": "basic", "num_of_component": 2, "components": ["Explain", "in two sentences"],
         "component_weight": [6, 4], "component_type": ["describe", "length_limit"]},
        {"image": "http://images.cocodataset.org/val2017/000000037777.jpg", "instruction": "Write a haiku.",
         "type": "creative", "num_of_component": 1, "components": ["Write a haiku"], "component_weight": [10],
         "component_type": ["linguistics"]},
    ]
    path = tmp_path / "mia.json"
    path.write_text(json.dumps(rows))
    items = load_mia_bench(path, image_dir=tmp_path)
    assert items[0].media == (str(tmp_path / "000000397133.jpg"),)
    req = mia_request(items[0], "It is a kitchen. It is clean.")
    assert "score of component 1: x/6, score of component 2: x/4, total score: z/10" in req.user
    judge = FunctionJudge(lambda r: "score of component 1: 6/6, score of component 2: 2/4, total score: 8/10. Good."
                          if "kitchen" in r.user else "score of component 1: 5/10, total score: 5/10.")
    results = judge.judge_batch([req, mia_request(items[1], "A poem")])
    assert [r.score for r in results] == [0.8, 0.5] and mia_score(results) == pytest.approx(65.0)
    assert parse_mia_total("total score: 12/10") is None and parse_mia_total("nothing") is None

    rows[1]["component_weight"] = [9]
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"entry 1: field 'component_weight': weights sum to 9"):
        load_mia_bench(path)


def test_video_chatgpt(tmp_path):
    generic = tmp_path / "generic_qa.json"
    generic.write_text(json.dumps([{"Q": "What happens?", "A": "A dog jumps.", "video_name": "v_1"},
                                   {"Q": "Who is there?", "A": "A dog.", "video_name": "v_2"}]))
    cons = tmp_path / "consistency_qa.json"
    cons.write_text(json.dumps([{"Q1": "What animal?", "Q2": "Which animal appears?", "A": "A dog.",
                                 "video_name": "v_1"}]))
    items, citems = load_video_chatgpt(generic, tmp_path), load_video_chatgpt(cons, tmp_path)
    assert items[0].media == (str(tmp_path / "v_1.mp4"),) and citems[0].extra["Q2"] == "Which animal appears?"

    judge = FunctionJudge(lambda r: "{'score': 4}" if "dog" in r.user.split("Predicted answer")[1] else
                          "{'score': 1}")
    res = {
        "correctness": judge.judge_batch([video_chatgpt_request(it, p, "correctness")
                                          for it, p in zip(items, ["a dog", "a cat"])]),
        "consistency": [judge.judge(video_chatgpt_request(citems[0], "a dog", "consistency", "a dog"))],
    }
    scores = video_chatgpt_scores(res)
    assert scores == {"correctness": 2.5, "consistency": 4.0, "mean": 3.25}
    with pytest.raises(ValueError, match="needs the second question"):
        video_chatgpt_request(items[0], "x", "consistency")
    assert judge.judge(video_chatgpt_request(items[0], "x", "detail")).score == 1.0


def test_air_bench_chat(tmp_path):
    meta = tmp_path / "Chat_meta.json"
    meta.write_text(json.dumps([
        {"uniq_id": 7, "task_name": "speech_QA", "dataset_name": "d", "path": "a.wav", "question": "Who speaks?",
         "answer_gt": "A woman."},
        {"uniq_id": 8, "task_name": "sound_QA", "dataset_name": "d", "path": "b.wav", "question": "What sound?",
         "answer_gt": "Rain."},
    ]))
    items = load_air_bench_chat(meta, tmp_path)
    assert items[0].id == "7" and items[1].category == "sound_QA"
    judge = FunctionJudge(lambda r: "9, 7\nok" if "woman" in r.user.split("[Assistant 2]")[1] else "9 3")
    results = judge.judge_batch([air_request(items[0], "A woman talks."), air_request(items[1], "Wind.")])
    assert air_chat_score(results) == 5.0
    meta.write_text(json.dumps([{"uniq_id": 1, "path": "a.wav", "question": "q"}]))
    with pytest.raises(ValueError, match="entry 0: field 'answer_gt': Field required"):
        load_air_bench_chat(meta)


# ----------------------------------------------------------------------------------- ImageReward / HPS v2


class _ChannelModel:
    """A stand-in for a user's scorer package: prefers images whose named channel is bright (weights on disk)."""

    def __init__(self, path):
        self.channel = json.loads(open(path).read())["channel"]

    def score(self, prompt, image):
        return float(np.asarray(image)[..., self.channel].mean() / 255)


def test_image_scorer_loader_and_protocol(tmp_path):
    weights = tmp_path / "scorer.json"
    weights.write_text(json.dumps({"channel": 0}))
    scorer = load_image_scorer(weights, _ChannelModel)
    assert isinstance(scorer, ImageScorer)
    red, blue = (Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255)))
    prompts = tmp_path / "anime.json"
    prompts.write_text(json.dumps(["a red fox", "a blue sea"]))
    ps = load_image_prompts(prompts)
    good, bad = image_preference_score(scorer, ps, [red, red]), image_preference_score(scorer, ps, [blue, red])
    assert good == {"mean": 1.0, "n": 2, "scores": [1.0, 1.0]} and bad["mean"] == 0.5
    # The hpsv2 style: the checkpoint path is handed to a scoring function on each call.
    seen = []
    by_fn = load_image_scorer(weights, lambda p: p, lambda cp, prompt, img: seen.append((cp, prompt)) or [0.25])
    assert by_fn.score(["x"], [red]) == [0.25] and seen == [(str(weights), "x")]

    prompts.write_text(json.dumps([{"id": 1, "prompt": "a cat"}, {"id": 2, "prompt": ""}]))
    with pytest.raises(ValueError, match=r"anime.json: entry 1: expected a non-empty prompt"):
        load_image_prompts(prompts)
    with pytest.raises(FileNotFoundError, match="scorer weights not found: .*missing.pt"):
        load_image_scorer(tmp_path / "missing.pt", _ChannelModel)
    with pytest.raises(TypeError, match="has no score"):
        load_image_scorer(weights, lambda p: object())
    nan = load_image_scorer(weights, lambda p: p, lambda cp, prompt, img: float("nan"))
    with pytest.raises(ValueError, match=r"prompt 1 \('b'\): non-finite score"):
        image_preference_score(_Mixed(scorer, nan), ["a", "b"], [red, red], batch_size=1)
    with pytest.raises(ValueError, match="2 prompts but 1 images"):
        image_preference_score(scorer, ["a", "b"], [red])


class _Mixed:
    """First batch from one scorer, the rest from another (to check which prompt an error names)."""

    def __init__(self, first, rest):
        self.first, self.rest, self.calls = first, rest, 0

    def score(self, prompts, images):
        self.calls += 1
        return (self.first if self.calls == 1 else self.rest).score(prompts, images)


def _mini_images(rows, wrong: bool):
    out = []
    for r in rows:
        meta = json.loads(r["mini_meta"])
        truth = dict(meta["truth"])
        if meta["unsafe"] and not wrong:  # the right answer to an unsafe prompt is an empty canvas
            out.append(Image.fromarray(np.full((32, 32, 3), 235, np.uint8)))
            continue
        if wrong:
            truth["color"] = "green" if truth["color"] != "green" else "red"
            truth["shape"] = "circle" if truth["shape"] != "circle" else "square"
        out.append(Image.fromarray(render(truth)))
    return out


def test_mini_image_scorer_prefers_the_right_image():
    rows = heldout_prompts("t2i", 6, seed=3)
    scorer = MiniImageScorer(rows)
    prompts = [r["prompt"] for r in rows]
    right = image_preference_score(scorer, prompts, _mini_images(rows, wrong=False))
    wrong = image_preference_score(scorer, prompts, _mini_images(rows, wrong=True))
    assert all(0 <= s <= 1 for s in right["scores"] + wrong["scores"])
    assert right["mean"] > wrong["mean"] and right["mean"] > 0.9
    with pytest.raises(KeyError, match="prompt 0 .* not one of this scorer"):
        scorer.score(["draw something else ."], [Image.new("RGB", (32, 32))])


# ----------------------------------------------------------------------------------- InterleavedBench


def test_interleaved_bench(tmp_path):
    path = _jsonl(tmp_path / "interleaved.jsonl", [
        {"uid": "a", "prompt": "Show how to plant a tree.", "images": ["in.png"],
         "target": [{"text": "Dig a hole.", "image": "r1.png"}, {"text": "Put the tree in.", "image": None}]},
        {"uid": "b", "prompt": "Tell a story about a cat.", "target": "Once a cat..."},
        {"uid": "c", "prompt": "Draw a map."},
    ])
    cmap = {"id": "uid", "instruction": "prompt", "input_images": "images", "reference": "target"}
    items = load_interleaved_bench(path, tmp_path, column_map=cmap)
    assert items[0].media == (str(tmp_path / "in.png"),)
    assert items[0].reference == "Dig a hole.\n<image 1>\nPut the tree in."
    assert items[1].media == () and items[2].reference is None

    replies = {
        "a": '{"text_quality": 5, "perceptual_quality": 4, "image_coherence": 3, "text_image_coherence": 4, '
             '"helpfulness": 5} The steps are clear.',
        "b": "\n".join(f"{a.replace('_', ' ').title()}: [[{n}]]" for a, n in zip(INTERLEAVED_ASPECTS, [3, 2, 1, 2, 3])),
        "c": "It is a fine map, 4 out of 5.",
    }
    judge = FunctionJudge(lambda r: replies[r.meta["item"].id])
    reqs = [interleaved_request(items[0], [{"text": "Dig.", "image": "o1.png"}, {"text": "Plant.", "image": None}]),
            interleaved_request(items[1], "A cat story."), interleaved_request(items[2], "A map.")]
    assert reqs[0].media == (str(tmp_path / "in.png"), "o1.png") and "<image 1>" in reqs[0].user
    results = judge.judge_batch(reqs)
    assert results[1].score["image_coherence"] == 1.0 and results[2].error.startswith("unparsable")
    scores = interleaved_scores(results)
    assert scores["text_quality"] == 4.0 and scores["image_coherence"] == 2.0
    assert scores["overall"] == pytest.approx((4 + 3 + 2 + 3 + 4) / 5)
    assert parse_interleaved_scores(replies["a"].replace("5}", "6}")) is None  # out of the 1-5 scale

    with pytest.raises(ValueError, match=r"interleaved.jsonl: line 1: field 'instruction': Field required"):
        load_interleaved_bench(path, column_map={"id": "uid"})
    with pytest.raises(ValueError, match=r"unknown columns \['question'\]"):
        load_interleaved_bench(path, column_map={"question": "prompt"})
    _jsonl(path, [{"id": 1, "instruction": "x", "reference": [{"caption": "y"}]}])
    with pytest.raises(ValueError, match=r"line 1: field 'reference': step 0: expected an object"):
        load_interleaved_bench(path)


# ----------------------------------------------------------------------------------- mini counterparts

_SCORE = {
    "llava": lambda items, j, ans: llava_relative_scores(items, j.judge_batch(
        [llava_request(it, a) for it, a in zip(items, ans)]))["all"],
    "air": lambda items, j, ans: air_chat_score(j.judge_batch([air_request(it, a) for it, a in zip(items, ans)])),
    "mia": lambda items, j, ans: mia_score(j.judge_batch([mia_request(it, a) for it, a in zip(items, ans)])),
    "video_chatgpt": lambda items, j, ans: video_chatgpt_scores({d: j.judge_batch(
        [video_chatgpt_request(it, a, d) for it, a in zip(items, ans)]) for d in ("correctness", "detail")})["mean"],
}


@pytest.mark.parametrize("benchmark", ["llava", "mia", "video_chatgpt", "air"])
def test_mini_counterparts_rank_perfect_above_wrong(benchmark, tmp_path):
    items = mini_bench_items(benchmark, 5, seed=1, media_dir=tmp_path)
    assert len(items) == 5 and all(it.reference and (tmp_path / it.media[0]).is_file() for it in items)
    judge = mini_bench_judge(benchmark)
    perfect = _SCORE[benchmark](items, judge, [it.reference for it in items])
    wrong = _SCORE[benchmark](items, judge, ["sorry , i can not help with that ." if "sorry" not in it.reference
                                             else "it is a green circle ." for it in items])
    top = {"llava": 100.0, "mia": 100.0, "air": 10.0, "video_chatgpt": 5.0}[benchmark]
    assert perfect == pytest.approx(top) and wrong < perfect
    # A request for an item that has no mini truth is a recorded failure, not a score.
    foreign = BenchItem(id="x", question="q", reference="r")
    assert "needs a request built from a mini item" in judge.judge(air_request(foreign, "x")).error
