"""Judges against a real local HTTP server (misbehaving on request), a tiny local HF model, and a function."""
from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from aa_lib.judges import (
    FunctionJudge,
    HFJudge,
    HTTPJudge,
    JudgeRequest,
    JudgeResult,
    parse_score,
)

try:
    from judge_server import JudgeServer
except ImportError:  # tests/ imported as a package
    from tests.judge_server import JudgeServer

KEY = "sk-test-SECRET-0123456789"


@pytest.fixture
def server():
    with JudgeServer() as s:
        yield s


def make_judge(server, tmp_path=None, **kw):
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return HTTPJudge(server.base_url, "judge-model", KEY, cache_dir=tmp_path, **kw)


def request(i=0):
    return JudgeRequest(user=f"Rate answer {i}.", system="You are a strict judge. Reply with [[n]].")


def test_parse_score():
    assert parse_score("good [[7]]") == 7.0
    assert parse_score("format is [[n]]; rating [[ 8.5 ]]") == 8.5
    assert parse_score("first [[3]] then final [[9]]") == 9.0  # the last one is the verdict
    assert parse_score("no score here") is None
    assert parse_score("[[11]]") is None  # out of 1-10
    assert parse_score("[[0]]") is None
    assert parse_score("[[0]]", (0, 10)) == 0.0
    assert parse_score(None) is None


def test_success_sends_chat_completions(server):
    res = make_judge(server, temperature=0.0, max_tokens=32, extra_body={"top_k": 5}).judge(request())
    assert res.ok and res.score == 7.0 and res.calls == 1 and res.asks == 1
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    body = json.loads(sent["raw"])
    assert body["model"] == "judge-model" and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["top_k"] == 5  # server-specific fields reach the endpoint
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "Rate answer 0."


def test_retries_500_then_succeeds(server):
    server.script = [("status", 500), ("status", 503)]
    res = make_judge(server).judge(request())
    assert res.ok and res.score == 7.0
    assert server.count == 3


def test_gives_up_and_records_reason(server):
    server.script = [("status", 500)] * 10
    res = make_judge(server, max_retries=2).judge(request())
    assert not res.ok and res.score is None
    assert "HTTP 500" in res.error and "gave up after 3 attempts" in res.error
    assert server.count == 3


@pytest.mark.parametrize("code", [400, 409])
def test_client_errors_are_not_retried(server, code):
    server.script = [("status", code)]
    res = make_judge(server).judge(request())
    assert f"HTTP {code}" in res.error and server.count == 1


def test_full_endpoint_url_accepted(server):
    judge = HTTPJudge(server.base_url + "/chat/completions/", "m", KEY)
    assert judge.judge(request()).ok and server.requests[0]["path"] == "/v1/chat/completions"


def test_keyless_endpoint_sends_no_authorization(server, monkeypatch):
    # A key for another service in the environment must not travel to the judge's endpoint.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-service")
    monkeypatch.delenv("AA_JUDGE_API_KEY", raising=False)
    assert HTTPJudge(server.base_url, "m").judge(request()).ok
    assert server.requests[0]["headers"]["Authorization"] is None


def test_429_honours_retry_after_with_cap(server):
    server.script = [("status", 429, {"Retry-After": "1"})]
    t0 = time.monotonic()
    res = make_judge(server).judge(request())
    assert res.ok and server.count == 2
    assert time.monotonic() - t0 >= 0.9  # waited Retry-After, not the 0.01 s backoff
    server.script = [("status", 429, {"Retry-After": "100"})]
    t0 = time.monotonic()
    res = make_judge(server, max_retry_after=0.1).judge(request(1))
    assert res.ok and time.monotonic() - t0 < 5  # capped


def test_timeout_is_retried(server):
    server.script = [("slow", 2.0)]
    res = make_judge(server, timeout=0.3).judge(request())
    assert res.ok and server.count == 2
    server.script = [("slow", 2.0)] * 3
    res = make_judge(server, timeout=0.3, max_retries=1).judge(request(1))
    assert "timeout" in res.error and "gave up after 2 attempts" in res.error


def test_connection_refused_recorded():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    res = HTTPJudge(f"http://127.0.0.1:{port}/v1", "m", KEY, max_retries=1, backoff=0.01).judge(request())
    assert not res.ok and "connection error" in res.error


def test_malformed_reply_recorded(server):
    server.script = [("raw", b"<html>not json</html>")]
    res = make_judge(server).judge(request())
    assert "malformed" in res.error and server.count == 1


def test_reasks_when_no_score(server):
    server.script = [("text", "I think it is fine."), ("text", "Quite good overall.")]
    res = make_judge(server).judge(request())
    assert res.ok and res.score == 7.0 and res.asks == 3 and res.calls == 3
    third = json.loads(server.requests[2]["raw"])["messages"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third[2]["content"] == "I think it is fine." and "[[n]]" in third[3]["content"]

    server.script = [("text", "garbage")] * 3
    res = make_judge(server, max_reasks=1).judge(request(1))
    assert not res.ok and res.raw == "garbage" and res.error.startswith("unparsable") and res.asks == 2


def test_score_range_zero_to_ten(server):
    server.reply = lambda body: "Poor. [[0]]"
    assert make_judge(server, score_range=(0, 10)).judge(request()).score == 0.0
    res = make_judge(server, score_range=(1, 10), max_reasks=0).judge(request(1))
    assert res.error.startswith("unparsable")


def test_cache_resume_makes_no_requests_and_hides_key(server, tmp_path, caplog):
    # Item 1's first reply has no score (re-ask chain), item 2 fails for good: only successes are cached.
    def reply(body):
        text = body["messages"][1]["content"]
        if text.endswith("1.") and len(body["messages"]) == 2:
            return "no verdict"
        return f"[[{len(text) % 10 + 1}]] echo {text}"

    server.reply = reply
    reqs = [request(i) for i in range(4)]
    caplog.set_level(logging.WARNING)
    server.script = [("status", 500), ("status", 500), ("status", 500)]  # the first item fails (max_retries=2)
    judge = make_judge(server, tmp_path / "cache", max_retries=2)
    first = judge.judge_batch(reqs)
    assert first[0].error and "HTTP 500" in first[0].error
    assert all(r.ok for r in first[1:]) and first[1].asks == 2
    n = server.count

    again = make_judge(server, tmp_path / "cache", max_retries=2).judge_batch(reqs, max_workers=2)
    assert [r.score for r in again[1:]] == [r.score for r in first[1:]]
    assert all(r.calls == 0 for r in again[1:])
    assert server.count == n + 1  # only the failed item is asked again
    assert again[0].ok and again[0].calls == 1
    third = make_judge(server, tmp_path / "cache").judge_batch(reqs)
    assert server.count == n + 1 and all(r.ok and r.calls == 0 for r in third)

    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 5  # 4 items + 1 re-ask
    for f in files:
        assert KEY not in f.read_text()
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    dumped = json.dumps([r.to_dict() for r in first + again + third])
    assert KEY not in dumped and KEY not in caplog.text
    assert KEY not in repr(judge)


def test_key_never_in_errors(server):
    # A server that echoes the key back in its error body: the recorded error must not carry it.
    server.script = [("echo_auth", 401)]
    res = make_judge(server).judge(request())
    assert "HTTP 401" in res.error and KEY not in res.error and "***" in res.error


def test_env_configuration(server, monkeypatch):
    monkeypatch.setenv("AA_JUDGE_BASE_URL", server.base_url)
    monkeypatch.setenv("AA_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("AA_JUDGE_API_KEY", KEY)
    judge = HTTPJudge(backoff=0.01)
    assert judge.judge(request()).ok
    assert json.loads(server.requests[0]["raw"])["model"] == "env-model"
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(judge)
    monkeypatch.delenv("AA_JUDGE_MODEL")
    with pytest.raises(ValueError, match="AA_JUDGE_MODEL"):
        HTTPJudge()


def test_media_parts(server, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(img)
    res = make_judge(server).judge(JudgeRequest(user="Rate it.", media=(str(img),)))
    assert res.ok
    content = json.loads(server.requests[0]["raw"])["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "Rate it."}
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")

    res = make_judge(server).judge(JudgeRequest(user="Rate it.", media=(str(tmp_path / "missing.png"),)))
    assert "bad request" in res.error and "missing.png" in res.error and server.count == 1


def test_function_judge():
    def rubric(req: JudgeRequest):
        if "boom" in req.user:
            raise RuntimeError("rubric broke")
        if "text" in req.user:
            return "fine [[4]]"
        return 12 if "big" in req.user else 6

    judge = FunctionJudge(rubric)
    out = judge.judge_batch([JudgeRequest(u) for u in ["num", "text", "big", "boom"]])
    assert [r.score for r in out] == [6.0, 4.0, None, None]
    assert "outside" in out[2].error and "RuntimeError: rubric broke" in out[3].error
    assert isinstance(out[0], JudgeResult)


def _tiny_judge_model(path):
    """A tiny Llama trained for a few steps to answer "[[ 7 ]]" after "Assistant :", with a WordLevel tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "System", "User", "Assistant", ":", "[[", "]]", "Rate", "answer",
             "0", "1", "7", ".", "You", "are", "a", "judge"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="[BOS]", eos_token="[EOS]")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                                         eos_token_id=3))
    texts = [f"System: You are a judge.\nUser: Rate answer {i}.\nAssistant: [[ 7 ]] [EOS]" for i in (0, 1)]
    batch = tokenizer(texts, return_tensors="pt")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(**batch, labels=batch["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture
def one_thread():
    # Tiny ops on a busy 2-core machine run far slower with two intra-op threads fighting other processes.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_hf_judge(tmp_path, one_thread):
    _tiny_judge_model(tmp_path / "m")
    judge = HFJudge(tmp_path / "m", max_new_tokens=4, cache_dir=tmp_path / "cache")
    req = JudgeRequest(user="Rate answer 1.", system="You are a judge.")
    res = judge.judge(req)
    assert res.ok and res.score == 7.0 and res.calls == 1, res
    again = HFJudge(tmp_path / "m", max_new_tokens=4, cache_dir=tmp_path / "cache").judge(req)
    assert again.score == 7.0 and again.calls == 0 and again.raw == res.raw
    # Out of range reply -> re-asks (greedy, new conversation each time), then recorded as unparsable.
    strict = HFJudge(tmp_path / "m", max_new_tokens=4, score_range=(8, 10), max_reasks=1)
    bad = strict.judge(req)
    assert bad.error.startswith("unparsable") and bad.asks == 2
    assert "text-only" in judge.judge(JudgeRequest(user="x", media=("a.png",))).error
