"""Judges: one small interface over an OpenAI-compatible endpoint, a local HF causal LM, or a Python function.

eval-anything (SPEC §5) and the Table 2 benchmarks (SPEC §6) all ask a judge for a rating written as `[[n]]`.
A judge takes a `JudgeRequest` (system prompt, user prompt, optional media paths) and returns a `JudgeResult`
(raw reply, parsed score, error). Failures are recorded in the result, never raised, so a long evaluation
finishes and says what failed and why. Replies are cached on disk, keyed by a hash of the full request, so a
rerun of a finished evaluation makes no calls.
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import mimetypes
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aa_lib.media import write_text_atomic

logger = logging.getLogger(__name__)

ENV_BASE_URL = "AA_JUDGE_BASE_URL"
ENV_MODEL = "AA_JUDGE_MODEL"
ENV_API_KEY = "AA_JUDGE_API_KEY"

# `[[7]]` or `[[7.5]]`; the last one in a reply is the verdict (judges often restate the format before it).
SCORE_PATTERN = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")

REASK_PROMPT = (
    "Your reply did not contain a rating in the required format. Reply again with your rating as [[n]], "
    "where n is a number from {low:g} to {high:g}."
)


def parse_score(text: str | None, score_range: tuple[float, float] = (1, 10)) -> float | None:
    """The last `[[n]]` in `text` if it lies in `score_range` (inclusive), else None."""
    matches = SCORE_PATTERN.findall(text or "")
    if not matches:
        return None
    value = float(matches[-1])
    low, high = score_range
    return value if low <= value <= high else None


@dataclass
class JudgeRequest:
    user: str = field(metadata={"help": "The user prompt: what the judge rates, with its references."})
    system: str | None = field(default=None, metadata={"help": "The judge's instructions (system prompt)."})
    media: tuple[str, ...] = field(default=(), metadata={"help": "Paths of images / audio shown to the judge."})
    parser: Callable[[str], Any] | None = field(default=None, repr=False, compare=False, metadata={
        "help": "Reads the score from a reply (None when absent); default: the judge's `[[n]]` within its range. "
                "Benchmarks whose judges answer in another format (two scores on a line) pass their own."})
    reask_prompt: str | None = field(default=None, repr=False, metadata={
        "help": "Follow-up message when a reply has no parsable score; default: ask again for [[n]]."})
    meta: dict | None = field(default=None, repr=False, compare=False, metadata={
        "help": "Structured context for programmatic judges (FunctionJudge), e.g. the item and the response; "
                "never sent to a model nor hashed into the cache key."})

    def __post_init__(self):
        self.media = tuple(str(p) for p in self.media)


@dataclass
class JudgeResult:
    score: Any = field(default=None, metadata={
        "help": "The parsed `[[n]]` as a float (or the request parser's value); None when it failed."})
    raw: str | None = field(default=None, metadata={"help": "The judge's last reply."})
    error: str | None = field(default=None, metadata={"help": "What failed and why; None on success."})
    asks: int = field(default=0, metadata={"help": "Replies read (1 + re-asks for unparsable replies)."})
    calls: int = field(default=0, metadata={"help": "Replies that were not in the cache (cost)."})

    @property
    def ok(self) -> bool:
        return self.error is None and self.score is not None

    def to_dict(self) -> dict:
        return asdict(self)


class JudgeCallError(Exception):
    """A call that failed for good (after retries); its message is recorded in `JudgeResult.error`."""


class JSONCache:
    """One JSON file per request hash (`<dir>/<ab>/<hash>.json`), written atomically."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)["reply"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            # A torn or foreign file: treat as a miss; the next put replaces it.
            logger.warning("ignoring unreadable judge cache file %s: %s", path, e)
            return None

    def put(self, key: str, entry: dict) -> None:
        write_text_atomic(self._path(key), json.dumps(entry, ensure_ascii=False, indent=1))


def request_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class Judge:
    """Base judge: builds messages, re-asks on unparsable replies, caches replies, records failures.

    Subclasses implement `_payload(messages, media)` (the complete, secret-free description of one call; its hash
    is the cache key) and `_call(payload) -> str` (the reply; raise `JudgeCallError` when it failed for good).
    """

    def __init__(self, *, score_range: tuple[float, float] = (1, 10), max_reasks: int = 2,
                 cache_dir: str | os.PathLike | None = None):
        if score_range[0] > score_range[1]:
            raise ValueError(f"score_range {score_range}: low must not exceed high")
        self.score_range = (float(score_range[0]), float(score_range[1]))
        self.max_reasks = int(max_reasks)
        self.cache = JSONCache(cache_dir) if cache_dir is not None else None

    def _payload(self, messages: list[dict], media: tuple[str, ...]) -> dict:
        raise NotImplementedError

    def _call(self, payload: dict) -> str:
        raise NotImplementedError

    def judge(self, request: JudgeRequest) -> JudgeResult:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": request.user})
        low, high = self.score_range
        parse = request.parser or (lambda text: parse_score(text, self.score_range))
        reask = request.reask_prompt or REASK_PROMPT.format(low=low, high=high)
        result = JudgeResult()
        for _ in range(1 + self.max_reasks):
            try:
                payload = self._payload(messages, request.media)
            except (JudgeCallError, OSError) as e:
                result.error = f"bad request: {e}"
                return result
            key = request_hash(payload)
            reply = self.cache.get(key) if self.cache else None
            if reply is None:
                try:
                    reply = self._call(payload)
                except JudgeCallError as e:
                    result.error = f"call failed: {e}"
                    return result
                result.calls += 1
                if self.cache:
                    self.cache.put(key, {"key": key, "judge": type(self).__name__, "reply": reply})
            result.asks += 1
            result.raw = reply
            result.score = parse(reply)
            if result.score is not None:
                return result
            # Re-ask in the same conversation: the request changes, so the cache cannot answer it with the old reply.
            messages = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": reask}]
        expected = "the expected format" if request.parser else f"[[n]] with n in [{low:g}, {high:g}]"
        result.error = f"unparsable: no {expected} in {result.asks} replies"
        return result

    def judge_batch(self, requests: Sequence[JudgeRequest], max_workers: int = 1) -> list[JudgeResult]:
        """Judge each request, in order; `max_workers > 1` overlaps calls (HTTP judges)."""
        if max_workers <= 1:
            return [self.judge(r) for r in requests]
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return list(pool.map(self.judge, requests))


_RETRYABLE_STATUS = {408, 429}  # plus every 5xx


class HTTPJudge(Judge):
    """A judge behind any OpenAI-compatible chat-completions endpoint, spoken to through the `openai` client.

    base_url / model / api_key default to $AA_JUDGE_BASE_URL, $AA_JUDGE_MODEL and $AA_JUDGE_API_KEY. base_url is
    the API root (`http://host:port/v1`); a URL ending in `/chat/completions` is accepted too. Timeouts,
    connection errors, 408/429 and 5xx are retried with exponential backoff (Retry-After honoured, capped at
    `max_retry_after`); other client errors are not. The key is sent only in the Authorization header and kept
    out of the cache, results, errors, logs and repr.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0,
                 max_retry_after: float = 60.0, temperature: float = 0.0, max_tokens: int = 1024,
                 extra_body: dict | None = None, score_range: tuple[float, float] = (1, 10), max_reasks: int = 2,
                 cache_dir: str | os.PathLike | None = None):
        import openai  # here, not at the top: HF and function judges should not pay for it

        super().__init__(score_range=score_range, max_reasks=max_reasks, cache_dir=cache_dir)
        base_url = base_url or os.environ.get(ENV_BASE_URL)
        model = model or os.environ.get(ENV_MODEL)
        if not base_url:
            raise ValueError(f"HTTPJudge needs a base_url (argument or ${ENV_BASE_URL})")
        if not model:
            raise ValueError(f"HTTPJudge needs a model (argument or ${ENV_MODEL})")
        root = base_url.rstrip("/").removesuffix("/chat/completions")
        self.url = root + "/chat/completions"
        self.model = model
        self.__api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY, "")
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_backoff, self.max_retry_after = max_backoff, max_retry_after
        self.params = {"temperature": temperature, "max_tokens": max_tokens, **(extra_body or {})}
        # `_call` retries, not the client: the client's backoff is fixed (0.5 s doubling to 8 s), it waits out any
        # Retry-After up to 120 s and gives up on a longer one, and it retries 409; this judge's backoff is
        # configurable, its wait capped, and no other 4xx is retried. The client pools connections (across
        # judge_batch threads) and handles the timeout, the Authorization header, typed errors and reply parsing.
        # A key is always passed so the client never falls back to $OPENAI_API_KEY (a key for another service);
        # a keyless endpoint gets a placeholder the client insists on, and its header is left out of each request.
        self._client = openai.OpenAI(base_url=root, api_key=self.__api_key or "none", timeout=timeout,
                                     max_retries=0)
        self._headers = {} if self.__api_key else {"Authorization": openai.omit}

    def __repr__(self) -> str:
        return f"HTTPJudge(url={self.url!r}, model={self.model!r}, score_range={self.score_range})"

    def _redact(self, text: str) -> str:
        return text.replace(self.__api_key, "***") if self.__api_key else text

    def _payload(self, messages: list[dict], media: tuple[str, ...]) -> dict:
        if media:
            messages = [dict(m) for m in messages]
            first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
            parts = [{"type": "text", "text": messages[first_user]["content"]}]
            parts += [_media_part(p) for p in media]
            messages[first_user]["content"] = parts
        # The URL is part of the hashed request (another endpoint may answer differently); the key never is.
        return {"url": self.url, "body": {"model": self.model, "messages": messages, **self.params}}

    def _call(self, payload: dict) -> str:
        import openai

        body = dict(payload["body"])
        model, messages = body.pop("model"), body.pop("messages")
        reason = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                # Sampling parameters go as extra_body so they reach the endpoint exactly as configured (the
                # client's typed arguments would reject the extra fields other servers accept).
                raw = self._client.chat.completions.with_raw_response.create(
                    model=model, messages=messages, extra_body=body, extra_headers=self._headers)
                return self._reply_text(raw)
            except openai.APIStatusError as e:
                reason = f"HTTP {e.status_code}: {self._redact(e.response.text[:300])}"
                if not (e.status_code in _RETRYABLE_STATUS or e.status_code >= 500):
                    raise JudgeCallError(reason) from None
                retry_after = e.response.headers.get("Retry-After")
            except openai.APITimeoutError as e:  # before its base class, APIConnectionError
                reason = f"timeout after {self.timeout:g}s ({type(e.__cause__ or e).__name__})"
            except openai.APIConnectionError as e:
                reason = self._redact(f"connection error: {e.__cause__ or e}")
            except openai.OpenAIError as e:  # anything else the client refuses is this item's failure
                raise JudgeCallError(self._redact(f"{type(e).__name__}: {e}")) from None
            if attempt < self.max_retries:
                seconds = _parse_retry_after(retry_after) if retry_after else None
                wait = min(self.max_backoff, self.backoff * 2**attempt)
                if seconds is not None:  # the server's Retry-After wins, capped
                    wait = min(max(seconds, 0.0), self.max_retry_after)
                logger.warning("judge call to %s failed (%s); retry %d/%d in %.2fs",
                               self.url, reason, attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        raise JudgeCallError(f"gave up after {self.max_retries + 1} attempts; last: {reason}")

    def _reply_text(self, raw: Any) -> str:
        try:
            content = raw.parse().choices[0].message.content
        except (ValueError, AttributeError, IndexError, TypeError) as e:  # not JSON, or JSON without a reply
            snippet = self._redact(raw.text[:200])
            raise JudgeCallError(f"malformed chat-completions reply ({type(e).__name__}): {snippet!r}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content or ""


def _parse_retry_after(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


_AUDIO_FORMATS = {".wav": "wav", ".mp3": "mp3"}


def _media_part(path: str) -> dict:
    """An OpenAI content part for an image (data URL) or an audio clip (input_audio)."""
    suffix = Path(path).suffix.lower()
    mime = mimetypes.guess_type(path)[0] or ""
    if not os.path.isfile(path):
        raise JudgeCallError(f"media file not found: {path}")
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    if suffix in _AUDIO_FORMATS:
        return {"type": "input_audio", "input_audio": {"data": data, "format": _AUDIO_FORMATS[suffix]}}
    raise JudgeCallError(f"unsupported media type for the chat-completions API: {path} (images, .wav, .mp3)")


class HFJudge(Judge):
    """A local Hugging Face causal LM as judge: greedy decoding, the same `[[n]]` parsing and re-asks.

    Text only: a request with media is recorded as failed. Uses the tokenizer's chat template when it has one,
    else a plain "System / User / Assistant" transcript.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, *, max_new_tokens: int = 64, device: str | None = None,
                 torch_dtype: Any = None, score_range: tuple[float, float] = (1, 10), max_reasks: int = 2,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__(score_range=score_range, max_reasks=max_reasks, cache_dir=cache_dir)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = str(model_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.name)
        self.model = AutoModelForCausalLM.from_pretrained(self.name, dtype=torch_dtype)
        if device:
            self.model.to(device)
        self.model.eval()
        self.max_new_tokens = max_new_tokens

    def __repr__(self) -> str:
        return f"HFJudge({self.name!r}, max_new_tokens={self.max_new_tokens})"

    def _payload(self, messages: list[dict], media: tuple[str, ...]) -> dict:
        if media:
            raise JudgeCallError(f"HFJudge is text-only; the request carries media {list(media)}")
        return {"model": self.name, "messages": messages, "max_new_tokens": self.max_new_tokens, "greedy": True}

    def _prompt(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:"

    def _call(self, payload: dict) -> str:
        import torch

        try:
            enc = self.tokenizer(self._prompt(payload["messages"]), return_tensors="pt")
            ids = enc["input_ids"]
            limit = getattr(self.model.config, "max_position_embeddings", None)
            if limit and ids.shape[1] + self.max_new_tokens > limit:
                ids = ids[:, -(limit - self.max_new_tokens):]  # keep the end: the response and the format request
            ids = ids.to(self.model.device)
            tok = self.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=self.max_new_tokens, pad_token_id=pad)
            return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        except Exception as e:  # a generation error is this item's failure, not the evaluation's
            raise JudgeCallError(f"generation failed: {type(e).__name__}: {e}") from None


class FunctionJudge(Judge):
    """Wrap a Python callable `fn(request) -> str | float | JudgeResult` (a programmatic judge, e.g. a rubric).

    A string is parsed for `[[n]]`; a number is the score itself (checked against `score_range`).
    """

    def __init__(self, fn: Callable[[JudgeRequest], Any], *, score_range: tuple[float, float] = (1, 10)):
        super().__init__(score_range=score_range, max_reasks=0, cache_dir=None)
        self.fn = fn

    def __repr__(self) -> str:
        return f"FunctionJudge({getattr(self.fn, '__qualname__', self.fn)!r})"

    def judge(self, request: JudgeRequest) -> JudgeResult:
        try:
            out = self.fn(request)
        except Exception as e:
            return JudgeResult(error=f"call failed: {type(e).__name__}: {e}", asks=1, calls=1)
        if isinstance(out, JudgeResult):
            return out
        low, high = self.score_range
        if isinstance(out, str):
            score = request.parser(out) if request.parser else parse_score(out, self.score_range)
            error = None if score is not None else f"unparsable: no [[n]] with n in [{low:g}, {high:g}] in 1 replies"
            return JudgeResult(score=score, raw=out, error=error, asks=1, calls=1)
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            if low <= out <= high:
                return JudgeResult(score=float(out), raw=None, asks=1, calls=1)
            return JudgeResult(raw=str(out), error=f"score {out} outside [{low:g}, {high:g}]", asks=1, calls=1)
        return JudgeResult(error=f"call failed: function returned {type(out).__name__}, not str/number", asks=1,
                           calls=1)
