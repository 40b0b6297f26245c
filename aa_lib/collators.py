"""Batch builders for multimodal training: SFT, preference pairs (DPO), reward pairs, and prompts for generation.

Every collator takes TRL conversational examples (`prompt` / `completion` / `chosen` / `rejected` message lists)
plus media keys: `images` (TRL's), `videos` and `audios` (aa_lib's). A media value is a PIL image / numpy array or a
reference that `aa_lib.media` decodes (path, bytes, datasets dict). Each example is rendered with the family's chat
template, its prompt is run through the family's processor with its media (which expands the placeholders into the
right number of media tokens), and its response is tokenized separately and appended. Tokenizing the two parts apart
makes the prompt/response boundary exact, so labels are the response ids and nothing else (prompt and media
placeholders are -100).

Media are processed example by example and their tensors concatenated in row order: that is the order in which
the models consume placeholders across a batch, and it lets text-only and media rows share a batch.

Training reads every row many times (epochs; DPO encodes each prompt for chosen and rejected), so each collator
memoizes its prompt encodings (and the image-output target encodings) in a bounded LRU keyed by the rendered text
and a cheap identity of each media value (a hash of bytes / pixels, a file's path + stat): decoding an mp4 and
running the processor happen once per distinct row. `cache_size=0` turns it off.

Outputs (torch tensors):
- `SFTCollator`: input_ids, attention_mask, labels (-100 outside the response), completion_mask, + media tensors.
- `PairCollator`: 2B rows, chosen rows first then rejected (TRL's DPO layout): input_ids, attention_mask,
  completion_mask, + media tensors for all 2B rows. Serves DPO (TRL reads completion_mask) and reward models.
- `PromptCollator`: prompts with the generation prompt appended, LEFT padded (for `generate`): input_ids,
  attention_mask, + media tensors. Keeps the raw examples under `"examples"` when `keep_examples=True`.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from aa_lib import media
from aa_lib.media import AUDIO_RATE
from aa_lib.models import get_family, media_token_ids

# Example key -> (modality, processor keyword). The processor keyword is what the transformers processors take.
MEDIA_KEYS = {"images": ("image", "images"), "videos": ("video", "videos"), "audios": ("audio", "audio")}
# Processor outputs that are per-token (padded along the sequence); every other tensor is per-media item.
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


class CollatorError(ValueError):
    """An example that cannot be batched (too long for max_length, media the family cannot take, bad messages)."""


def example_name(example: dict, index: int) -> str:
    """How errors name an example: its dataset row if the trainer recorded it (`aa_row`), else its id, else position."""
    for key in ("aa_row", "row", "id", "index"):
        if key in example and example[key] is not None:
            return f"example {key}={example[key]}"
    return f"example #{index} of the batch"


def _decode_media(kind: str, value, num_frames: int | None):
    if isinstance(value, (list, tuple)):  # arrays that went through a datasets table come back as lists
        value = np.asarray(value, dtype=np.float32 if kind == "audio" else np.uint8)
    if kind == "image":
        if isinstance(value, np.ndarray):
            return Image.fromarray(value.astype(np.uint8)).convert("RGB")
        return media.load_image(value)
    if kind == "audio":
        if isinstance(value, np.ndarray):
            return value.astype(np.float32)
        return media.load_audio(value)
    if isinstance(value, np.ndarray):  # video frames (T, H, W, 3)
        return value if num_frames is None or len(value) == num_frames else value[
            np.linspace(0, len(value) - 1, num_frames).round().astype(int)]
    return media.load_video(value, num_frames=num_frames)


def _media_values(example: dict, key: str) -> list:
    values = example.get(key) or []
    return list(values) if isinstance(values, (list, tuple)) else [values]


def _digest(data) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _media_identity(kind: str, value) -> tuple:
    """What the decoded value depends on, mirroring what `_decode_media` reads; raises when there is no cheap one."""
    if isinstance(value, dict):  # a datasets-style dict: the field aa_lib.media reads for this kind
        if kind == "audio" and value.get("array") is not None:
            return ("wave", _media_identity(kind, np.asarray(value["array"])), value.get("sampling_rate"))
        value = value.get("path") if kind == "video" else (value.get("bytes") or value.get("path"))
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", _digest(value))
    if isinstance(value, (str, os.PathLike)):
        return ("path",) + media.file_identity(value)
    if isinstance(value, Image.Image):
        return ("pil", value.mode, value.size, _digest(value.tobytes()))
    if isinstance(value, (list, tuple)):  # as _decode_media converts them
        value = np.asarray(value, dtype=np.float32 if kind == "audio" else np.uint8)
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, _digest(np.ascontiguousarray(value).tobytes()))
    raise TypeError(f"no identity for a {type(value).__name__} {kind}")


def _tensor_bytes(extra: dict) -> int:
    return sum(v.numel() * v.element_size() for v in extra.values() if isinstance(v, torch.Tensor))


def _as_messages(value, key: str, name: str) -> list[dict]:
    if isinstance(value, str):  # a bare string prompt/response: make it a message
        return [{"role": "user" if key == "prompt" else "assistant", "content": [{"type": "text", "text": value}]}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise CollatorError(f"{name}: column {key!r} must be a list of chat messages, got {type(value).__name__}")
    return value


def completion_text(completion) -> str:
    """The text parts of a completion's messages, joined (a message's content may be a plain string)."""
    text = ""
    for m in completion or []:
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        text += "".join(p.get("text") or "" for p in parts if p.get("type") == "text")
    return text


def count_media_parts(messages: list[dict]) -> dict[str, int]:
    counts = {"image": 0, "video": 0, "audio": 0}
    for m in messages:
        if isinstance(m.get("content"), list):
            for part in m["content"]:
                if part.get("type") in counts:
                    counts[part["type"]] += 1
    return counts


@dataclass
class _Base:
    """Shared encoding: family processor + chat template + media, with the media-safe length check."""

    processor: Any = field(metadata={"help": "The family's processor (or tokenizer for text families)."})
    family: str = field(metadata={"help": "aa_lib model family name (aa_lib.models.FAMILIES)."})
    max_length: int | None = field(default=None, metadata={"help": "Maximum tokens per row; the response end is "
                                                             "truncated, media tokens never are."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames sampled from each video (None: all)."})
    cache_size: int = field(default=2048, metadata={"help": "Prompt (and image-output target) encodings kept in an "
                                                            "LRU memo so a row read again (next epoch, chosen and "
                                                            "rejected) is not decoded and processed again; keyed by "
                                                            "text + media content/file stat. Holds the processor's "
                                                            "tensors of that many rows. 0 turns it off."})
    cache_megabytes: float = field(default=512, metadata={"help": "Bound on the memo's tensor memory (oldest rows "
                                                                  "are dropped first): at the paper's image sizes "
                                                                  "2048 rows of pixel values would take gigabytes."})

    def __post_init__(self):
        self._memo: OrderedDict = OrderedDict()
        self._memo_bytes = 0
        self.fam = get_family(self.family)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.media_ids = set(media_token_ids(self.processor, self.family).values())
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id

    # -- one row -------------------------------------------------------------------------------------------
    def _media(self, example: dict, name: str, messages: list[dict]) -> dict:
        """Decoded media for the processor, checked against the placeholders in the messages."""
        counts = count_media_parts(messages)
        kwargs = {}
        for key, (kind, proc_kw) in MEDIA_KEYS.items():
            values = _media_values(example, key)
            if (values or counts[kind]) and kind not in self.fam.modalities:
                raise CollatorError(f"{name}: model family {self.family} takes no {kind} input (column {key!r})")
            if len(values) != counts[kind]:
                raise CollatorError(f"{name}: {len(values)} item(s) in {key!r} but {counts[kind]} {kind} "
                                    f"placeholder(s) in the messages")
            if values:
                try:
                    kwargs[proc_kw] = [_decode_media(kind, v, self.num_frames) for v in values]
                except Exception as e:
                    raise CollatorError(f"{name}: column {key!r}: {e}") from e
        if "audio" in kwargs:
            kwargs["sampling_rate"] = AUDIO_RATE
        return kwargs

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _cached(self, key: tuple | None, compute: Callable[[], tuple[list, dict]]) -> tuple[list, dict]:
        """compute() through the LRU memo. Only successes are stored (a failing row raises again every time), and
        each call gets fresh containers: callers pop from the dict. The tensors are shared; no caller writes them."""
        if key is None or self.cache_size <= 0:
            return compute()
        if key in self._memo:
            self._memo.move_to_end(key)
            ids, extra = self._memo[key]
            return list(ids), dict(extra)
        ids, extra = compute()
        self._memo[key] = (ids, extra)
        self._memo_bytes += _tensor_bytes(extra)
        while len(self._memo) > self.cache_size or self._memo_bytes > self.cache_megabytes * 2 ** 20:
            _, (_, old) = self._memo.popitem(last=False)
            self._memo_bytes -= _tensor_bytes(old)
        return list(ids), dict(extra)

    def _media_key(self, example: dict, messages: list[dict]) -> tuple | None:
        """The identity of every media value the row feeds, plus the placeholder counts `_media` checks them
        against; None when a value has no cheap identity (the row is then encoded without the memo)."""
        try:
            return (tuple(count_media_parts(messages).values()), self.num_frames) + tuple(
                (key, tuple(_media_identity(kind, v) for v in _media_values(example, key)))
                for key, (kind, _) in MEDIA_KEYS.items())
        except Exception:  # unreadable / odd value: `_media` raises the row's error, or encodes it uncached
            return None

    def _encode_prompt(self, prompt: list[dict], example: dict, name: str) -> tuple[list[int], dict]:
        text = self._render(prompt, generation_prompt=True)

        def compute():
            media = self._media(example, name, prompt)
            if self.fam.modalities:
                out = self.processor(text=[text], return_tensors="pt", add_special_tokens=False, **media)
            else:
                out = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
            return out["input_ids"][0].tolist(), {k: v for k, v in out.items()
                                                  if k not in ("input_ids", "attention_mask")}

        media_key = self._media_key(example, prompt) if self.cache_size > 0 else None
        return self._cached(None if media_key is None else ("prompt", text, media_key), compute)

    def _encode_completion(self, prompt: list[dict], completion: list[dict], name: str) -> list[int]:
        head = self._render(prompt, generation_prompt=True)
        full = self._render(prompt + completion, generation_prompt=False)
        if not full.startswith(head):
            raise CollatorError(f"{name}: the chat template renders the prompt differently with and without the "
                                f"response; cannot separate the response tokens")
        tail = full[len(head):]
        eos = self.tokenizer.eos_token
        if eos and tail.endswith(eos + "\n"):  # the newline after the end of turn is never generated
            tail = tail[:-1]
        if any(count_media_parts(completion).values()):
            raise CollatorError(f"{name}: media in a response needs the image-token path (aa_lib.train.sft "
                                f"image-output training), not this text collator")
        return self.tokenizer(tail, add_special_tokens=False)["input_ids"]

    def _row(self, prompt: list[dict], completion: list[dict] | None, example: dict, name: str) -> dict:
        """One row; `completion=None`: a generation prompt, which may fill max_length (a response needs a token)."""
        prompt_ids, media = self._encode_prompt(prompt, example, name)
        room = 0 if completion is None else 1  # a training prompt must leave a token for its response
        if self.max_length is not None and len(prompt_ids) > self.max_length - room:
            n_media = sum(1 for t in prompt_ids if t in self.media_ids)
            why = ("; media tokens are never truncated" if completion is None else ", leaving no room for the "
                   "response; media tokens are never truncated: raise max_length or shorten the prompt")
            raise CollatorError(f"{name}: the prompt takes {len(prompt_ids)} tokens ({n_media} of them media "
                                f"tokens) but max_length is {self.max_length}{why}")
        comp_ids = [] if completion is None else self._encode_completion(prompt, completion, name)
        if self.max_length is not None:
            comp_ids = comp_ids[: self.max_length - len(prompt_ids)]
        # Placeholders never become labels (a response that spells out "<image>" still is no image).
        labels = [-100] * len(prompt_ids) + [t if t not in self.media_ids else -100 for t in comp_ids]
        ids = prompt_ids + comp_ids
        for key in ("mm_token_type_ids", "token_type_ids"):  # per-token: the response's tokens are text (0)
            types = media.pop(key, None)
            if types is not None:
                media[key] = torch.cat([types[0], torch.zeros(len(comp_ids), dtype=types.dtype)])
        return {"input_ids": ids, "labels": labels, "n_prompt": len(prompt_ids), "media": media}

    # -- batch ---------------------------------------------------------------------------------------------
    def _stack(self, rows: list[dict], padding_side: str = "right") -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        B = len(rows)
        input_ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((B, width), dtype=torch.long)
        labels = torch.full((B, width), -100, dtype=torch.long)
        completion = torch.zeros((B, width), dtype=torch.long)
        per_token = {k: torch.zeros((B, width), dtype=torch.long) for r in rows for k in r["media"]
                     if k in _TOKEN_KEYS}
        per_media: dict[str, list[torch.Tensor]] = {}
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
            input_ids[i, sl] = torch.tensor(r["input_ids"], dtype=torch.long)
            attention[i, sl] = 1
            labels[i, sl] = torch.tensor(r["labels"], dtype=torch.long)
            completion[i, sl] = (labels[i, sl] != -100).long()
            for k, v in r["media"].items():
                if k in _TOKEN_KEYS:
                    per_token[k][i, sl] = v
                else:
                    per_media.setdefault(k, []).append(v)
        out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "completion_mask": completion}
        out.update(per_token)
        for k, vs in per_media.items():
            out[k] = torch.cat(vs, dim=0)
        return out


def split_conversation(messages: list[dict], name: str, key: str) -> tuple[list[dict], list[dict]]:
    """(prompt, response) of a full conversation: the response is the final assistant turn."""
    if not messages or messages[-1].get("role") != "assistant":
        raise CollatorError(f"{name}: column {key!r} must end with an assistant message")
    return messages[:-1], messages[-1:]


@dataclass
class SFTCollator(_Base):
    """Prompt/completion examples -> a training batch with labels on the response only (right padded).

    Also takes `messages` (a full conversation: the final assistant turn is the response).
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = []
        for i, ex in enumerate(examples):
            name = example_name(ex, i)
            if "prompt" in ex and "completion" in ex:
                prompt = _as_messages(ex["prompt"], "prompt", name)
                completion = _as_messages(ex["completion"], "completion", name)
            elif "messages" in ex:
                prompt, completion = split_conversation(_as_messages(ex["messages"], "messages", name), name,
                                                        "messages")
            else:
                raise CollatorError(f"{name}: SFT needs columns 'prompt' and 'completion' (or 'messages'); "
                                    f"got {sorted(ex)}")
            rows.append(self._row(prompt, completion, ex, name))
        return self._stack(rows)


@dataclass
class PairCollator(_Base):
    """Preference examples -> 2B rows, chosen first then rejected (TRL DPO layout), media repeated for both halves.

    Takes DPO examples (`prompt` + `chosen`/`rejected` assistant turns) or reward pairs (`chosen`/`rejected` full
    conversations). The output keeps `labels` only when `with_labels` (TRL's DPO passes every key but
    completion_mask to the model, and a model given labels computes an unused loss).
    """

    with_labels: bool = field(default=False, metadata={"help": "Also return labels (-100 outside responses)."})

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        halves: dict[str, list[dict]] = {"chosen": [], "rejected": []}
        for i, ex in enumerate(examples):
            name = example_name(ex, i)
            for key in ("chosen", "rejected"):
                if key not in ex:
                    raise CollatorError(f"{name}: preference pairs need columns 'chosen' and 'rejected'; got "
                                        f"{sorted(ex)}")
                resp = _as_messages(ex[key], key, name)
                if "prompt" in ex and ex["prompt"] is not None:
                    prompt, completion = _as_messages(ex["prompt"], "prompt", name), resp
                else:
                    prompt, completion = split_conversation(resp, name, key)
                halves[key].append(self._row(prompt, completion, ex, f"{name} ({key})"))
        out = self._stack(halves["chosen"] + halves["rejected"])
        if not self.with_labels:
            out.pop("labels")
        return out


@dataclass
class PromptCollator(_Base):
    """Prompts (with the generation prompt) for `generate`: LEFT padded so every prompt ends at the last column.

    `max_length` bounds the prompt; a prompt that does not fit raises (media tokens are never cut).
    """

    keep_examples: bool = field(default=False, metadata={"help": "Return the raw examples under 'examples'."})

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        rows = []
        for i, ex in enumerate(examples):
            name = example_name(ex, i)
            if "prompt" not in ex:
                raise CollatorError(f"{name}: generation needs a 'prompt' column; got {sorted(ex)}")
            rows.append(self._row(_as_messages(ex["prompt"], "prompt", name), None, ex, name))
        out = self._stack(rows, padding_side="left")
        out.pop("labels")
        out.pop("completion_mask")
        if self.keep_examples:
            out["examples"] = list(examples)
        return out


def media_mask(input_ids: torch.Tensor, tokenizer, family: str) -> torch.Tensor:
    """True where input_ids hold one of the family's media placeholder tokens."""
    ids = torch.tensor(sorted(media_token_ids(tokenizer, family).values()), device=input_ids.device)
    return torch.isin(input_ids, ids)


@dataclass
class ImageOutputSFTCollator(_Base):
    """Chameleon T2I / TI2TI SFT: the response is optional text then the target image (`completion_images`).

    The target image enters as the processor's placeholders (begin-of-image, N image tokens, end-of-image) plus
    its pixel_values; the trainer swaps the placeholders for the image's VQ token ids (it needs the model's VQ
    encoder), and `image_target_mask` marks the response positions whose labels are those ids. All other labels
    follow SFTCollator: -100 on the prompt, response ids elsewhere. pixel_values hold every image of the batch in
    placeholder order (a row's prompt images, then its target image).
    """

    def _target_key(self, text: str, image) -> tuple | None:
        if self.cache_size <= 0:
            return None
        try:
            return ("target", text, _media_identity("image", image))
        except Exception:  # no cheap identity: encoded uncached (a bad image raises in _encode_target)
            return None

    def _encode_target(self, text: str, image, name: str, sep: int | None) -> tuple[list[int], dict]:
        """(response ids: text, image placeholders, eos; {"pixel_values"}) of the target image."""
        try:
            img = _decode_media("image", image, None)
        except Exception as e:
            raise CollatorError(f"{name}: column 'completion_images': {e}") from e
        out = self.processor(text=[(" " + text if text else "") + self.fam.media_tokens["image_token"]],
                             images=[img], return_tensors="pt", add_special_tokens=False)
        resp = out["input_ids"][0].tolist()
        if sep is not None and resp and resp[-1] == sep:
            resp = resp[:-1]  # the processor ends every text with <sep>; the answer ends with eos instead
        return resp + [self.tokenizer.eos_token_id], {"pixel_values": out["pixel_values"]}

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = []
        image_tok = self.tokenizer.convert_tokens_to_ids(self.fam.media_tokens["image_token"])
        sep = getattr(self.tokenizer, "sep_token_id", None)
        for i, ex in enumerate(examples):
            name = example_name(ex, i)
            targets = ex.get("completion_images") or []
            if len(targets) != 1:
                raise CollatorError(f"{name}: image-output SFT needs exactly one image in 'completion_images', "
                                    f"got {len(targets)}")
            prompt = _as_messages(ex["prompt"], "prompt", name)
            prompt_ids, media = self._encode_prompt(prompt, ex, name)
            text = completion_text(ex.get("completion"))
            resp, out = self._cached(self._target_key(text, targets[0]),
                                     lambda: self._encode_target(text, targets[0], name, sep))
            n_img = sum(t == image_tok for t in resp)
            if self.max_length is not None and len(prompt_ids) + len(resp) > self.max_length:
                raise CollatorError(f"{name}: prompt ({len(prompt_ids)} tokens) + target image response "
                                    f"({len(resp)} tokens, {n_img} of them image tokens) exceed max_length "
                                    f"{self.max_length}; image tokens are never truncated")
            pv = [media["pixel_values"]] if "pixel_values" in media else []
            rows.append({"input_ids": prompt_ids + resp, "labels": [-100] * len(prompt_ids) + resp,
                         "n_prompt": len(prompt_ids), "media": {"pixel_values": torch.cat(pv + [out["pixel_values"]])},
                         "target": [0] * len(prompt_ids) + [int(t == image_tok) for t in resp]})
        batch = self._stack(rows)
        target = torch.zeros_like(batch["input_ids"])
        for i, r in enumerate(rows):
            target[i, : len(r["target"])] = torch.tensor(r["target"])
        batch["image_target_mask"] = target.bool()
        return batch
