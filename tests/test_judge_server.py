"""The HTTP judge against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1 serving
SmolLM2-135M-Instruct (the `smollm2` fixture's folder), judging the LLaVA-Bench protocol end to end on items written
in the loader's layout. LLaVA-Bench's review is text-only (the judge sees captions and boxes, not the image), so a
text-only model can serve it. A 135M model does not keep to the two-scores format: those replies are recorded as
failures with their reason, the evaluation still finishes, and a rerun answers every request from the cache."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aa_lib.benchmarks import llava_relative_scores, llava_request, load_llava_bench
from aa_lib.judges import HTTPJudge

STARTUP_S = 240  # loading the model on a busy 2-core machine (seen: ~20 s alone)
POST_LINE = '"POST /v1/chat/completions HTTP/1.1" 200'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    """(base_url, model name, log path) of `transformers serve` pinned to the SmolLM2 folder; killed afterwards."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe), "serve", str(smollm2), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
           "--dtype", "float32", "--log-level", "info"]
    # One thread, as the tests use: the server shares 2 cores with them. uvicorn's access log counts the calls.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if json.load(r).get("status") == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve not ready after {STARTUP_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", str(smollm2), log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def posts(log: Path) -> int:
    return log.read_text().count(POST_LINE)


def llava_files(root: Path) -> list:
    from PIL import Image

    (root / "img").mkdir()
    for name, colour in (("bus.jpg", "red"), ("dog.jpg", "brown")):
        Image.new("RGB", (32, 32), colour).save(root / "img" / name)
    rows = {
        "questions.jsonl": [
            {"question_id": 0, "image": "bus.jpg", "text": "What colour is the bus?", "category": "conv"},
            {"question_id": 1, "image": "dog.jpg", "text": "Describe the image in detail.", "category": "detail"}],
        "answers_gpt4.jsonl": [{"question_id": 0, "text": "The bus is red."},
                               {"question_id": 1, "text": "A brown dog lies on a wooden floor next to a ball."}],
        "caps.jsonl": [{"image": "bus.jpg", "caption": ["A red bus on a street."],
                        "instances": [{"category": "bus", "bbox": [0.1, 0.2, 0.9, 0.8]}]},
                       {"image": "dog.jpg", "caption": ["A brown dog lying on a floor."], "instances": []}]}
    for name, records in rows.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return load_llava_bench(root / "questions.jsonl", root / "answers_gpt4.jsonl", root / "caps.jsonl", root / "img")


def test_llava_bench_protocol_against_transformers_serve(server, tmp_path):
    base_url, model, log = server
    items = llava_files(tmp_path)
    requests = [llava_request(it, ans) for it, ans in zip(items, ["It is red.", "A dog."])]

    def judge():
        return HTTPJudge(base_url, model, max_tokens=16, max_reasks=1, max_retries=0, timeout=300,
                         cache_dir=tmp_path / "cache")

    parse = requests[0].parser  # the protocol's own reader of "score1 score2" on the first line
    calls_before = posts(log)
    first = judge().judge_batch(requests)
    assert len(first) == len(items)
    for r in first:
        assert r.raw and r.asks in (1, 2)  # a real reply came back for every request
        if r.ok:
            assert r.score == parse(r.raw) and r.error is None
        else:  # the first reply and the re-ask both missed the format: a failure, with its reason
            assert parse(r.raw) is None and r.asks == 2
            assert r.error == "unparsable: no the expected format in 2 replies"
    failures = [r for r in first if not r.ok]
    assert failures, [r.raw for r in first]  # SmolLM2-135M does not keep to the two-scores line
    assert sum(r.calls for r in first) == sum(r.asks for r in first) == posts(log) - calls_before

    scores = llava_relative_scores(items, first)  # the evaluation finishes over what was scored
    assert set(scores) == ({"all"} | {it.category for it, r in zip(items, first) if r.ok} if scores else set())

    calls_before = posts(log)
    again = judge().judge_batch(requests)
    assert posts(log) == calls_before and all(r.calls == 0 for r in again)
    assert [(r.score, r.raw, r.error, r.asks) for r in again] == [(r.score, r.raw, r.error, r.asks) for r in first]
