"""Table 2 benchmark loaders on tiny synthetic files in the published formats, and their scoring protocols."""
from __future__ import annotations

import json
import re

import pytest

from aa_lib.benchmarks import (
    air_chat_score,
    air_request,
    llava_relative_scores,
    llava_request,
    load_air_bench_chat,
    load_llava_bench,
    load_mia_bench,
    load_video_chatgpt,
    mia_request,
    mia_score,
    parse_mia_total,
    video_chatgpt_request,
    video_chatgpt_scores,
)
from aa_lib.judges import FunctionJudge


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
    with pytest.raises(ValueError, match="entry 0: missing field 'answer_gt'"):
        load_air_bench_chat(meta)
