"""Collators: labels on response tokens only, media tokens never truncated, mixed text/media batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aa_lib import media
from aa_lib.collators import CollatorError, PairCollator, PromptCollator, SFTCollator, media_mask
from aa_lib.models import build_tiny, load_model

CORPUS = ["the red cat sits on the mat", "a blue dog runs in the park", "what is in the image",
          "describe the video", "what do you hear", "a sine tone is playing"] * 3


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("collator_models")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(build_tiny(family, root / family, CORPUS, seed=0))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("collator_media")
    rng = np.random.RandomState(0)
    img = Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))
    wav = media.write_bytes_atomic(root / "tone.wav", media.encode_wav(
        np.sin(np.arange(8000) / 16000 * 2 * np.pi * 440).astype(np.float32)))
    mp4 = media.write_bytes_atomic(root / "clip.mp4", media.encode_mp4((rng.rand(4, 32, 32, 3) * 255).astype(np.uint8)))
    return {"image": img, "audio": str(wav), "video": str(mp4)}


MEDIA_KEY = {"image": "images", "audio": "audios", "video": "videos"}
CASES = [("llama", None), ("llava", "image"), ("qwen2_vl", "image"), ("qwen2_vl", "video"), ("qwen2_audio", "audio")]


def make(kind, media_files, q="what is in the image", answer="a red cat", row=None):
    content = [{"type": "text", "text": q}]
    ex = {}
    if kind:
        content = [{"type": kind}] + content
        ex[MEDIA_KEY[kind]] = [media_files[kind]]
    ex["prompt"] = [{"role": "user", "content": content}]
    ex["completion"] = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    ex["chosen"] = ex["completion"]
    ex["rejected"] = [{"role": "assistant", "content": [{"type": "text", "text": "a blue dog runs in the park"}]}]
    if row is not None:
        ex["aa_row"] = row
    return ex


def response_ids(tok, family, answer):
    # The templates end an assistant turn with eos; plain style puts a space before the answer.
    text = (f" {answer}" if family in ("llama", "llava") else answer) + tok.eos_token
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family,kind", CASES)
def test_labels_are_response_tokens_only(loaded, media_files, family, kind):
    model, proc = loaded(family)
    tok = getattr(proc, "tokenizer", proc)
    answers = ["a red cat", "a blue dog runs in the park"]
    batch = SFTCollator(proc, family, max_length=128)([make(kind, media_files, answer=answers[0]),
                                                       make(None, media_files, answer=answers[1])])
    mm = media_mask(batch["input_ids"], tok, family)
    if kind:
        assert mm[0].sum() > 4, "the processor expands the placeholder into several media tokens"
    assert (batch["labels"][mm] == -100).all()
    for i, answer in enumerate(answers):
        labels = batch["labels"][i]
        want = response_ids(tok, family, answer)
        got = labels[labels != -100].tolist()
        assert got == want
        n = int(batch["attention_mask"][i].sum())
        # the response is the tail of the row, and the labels equal the input ids there
        assert batch["input_ids"][i, n - len(want):n].tolist() == want
        assert (labels[: n - len(want)] == -100).all() and (labels[n:] == -100).all()
    # the batch goes through the model (mixed text/media rows included)
    out = model(**{k: v for k, v in batch.items() if k != "completion_mask"})
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("family,kind", [("llava", "image"), ("qwen2_audio", "audio"), ("qwen2_vl", "video")])
def test_too_long_media_example_raises_and_response_is_truncated(loaded, media_files, family, kind):
    _, proc = loaded(family)
    tok = getattr(proc, "tokenizer", proc)
    ex = make(kind, media_files, row=7)
    n_prompt = len(PromptCollator(proc, family)([ex])["input_ids"][0])
    with pytest.raises(CollatorError, match=r"aa_row=7.*media tokens.*max_length"):
        SFTCollator(proc, family, max_length=n_prompt - 3)([make(None, media_files), ex])
    batch = SFTCollator(proc, family, max_length=n_prompt + 2)([ex])
    full = SFTCollator(proc, family)([ex])
    assert batch["input_ids"].shape[1] == n_prompt + 2
    assert (batch["labels"] != -100).sum() == 2  # the response end was cut ...
    assert media_mask(batch["input_ids"], tok, family).sum() == media_mask(full["input_ids"], tok, family).sum()  # ... media kept
    assert batch["input_ids"][0].tolist() == full["input_ids"][0, : n_prompt + 2].tolist()


def test_pair_collator_layout(loaded, media_files):
    model, proc = loaded("llava")
    exs = [make("image", media_files), make(None, media_files), make("image", media_files)]
    batch = PairCollator(proc, "llava", max_length=128)(exs)
    assert batch["input_ids"].shape[0] == 6 and "labels" not in batch
    assert batch["pixel_values"].shape[0] == 4  # 2 images, once for the chosen and once for the rejected rows
    tok = proc.tokenizer
    for i in range(3):
        chosen = batch["input_ids"][i][batch["completion_mask"][i].bool()].tolist()
        rejected = batch["input_ids"][3 + i][batch["completion_mask"][3 + i].bool()].tolist()
        assert chosen == response_ids(tok, "llava", "a red cat")
        assert rejected == response_ids(tok, "llava", "a blue dog runs in the park")
    # reward pairs: full conversations, no prompt column
    rp = [{"chosen": e["prompt"] + e["chosen"], "rejected": e["prompt"] + e["rejected"],
           **({"images": e["images"]} if "images" in e else {})} for e in exs]
    b2 = PairCollator(proc, "llava", max_length=128)(rp)
    assert torch.equal(b2["input_ids"], batch["input_ids"]) and torch.equal(b2["completion_mask"], batch["completion_mask"])
    logits = model(**{k: v for k, v in batch.items() if k != "completion_mask"}).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_prompt_collator_left_pads_for_generation(loaded, media_files):
    model, proc = loaded("qwen2_vl")
    batch = PromptCollator(proc, "qwen2_vl", keep_examples=True)([make("image", media_files), make(None, media_files)])
    assert (batch["attention_mask"][:, -1] == 1).all() and batch["attention_mask"][1, 0] == 0
    assert len(batch["examples"]) == 2
    tail = proc.tokenizer.decode(batch["input_ids"][1, -3:])
    assert tail.endswith("assistant\n")
    gen = model.generate(**{k: v for k, v in batch.items() if k != "examples"}, max_new_tokens=2, do_sample=False)
    assert gen.shape == (2, batch["input_ids"].shape[1] + 2)


def test_bad_examples_name_the_row(loaded, media_files):
    _, proc = loaded("llava")
    ex = make("image", media_files, row=3)
    ex["images"] = []
    with pytest.raises(CollatorError, match=r"aa_row=3: 0 item\(s\) in 'images' but 1 image placeholder"):
        SFTCollator(proc, "llava")([ex])
    _, tok = loaded("llama")
    with pytest.raises(CollatorError, match=r"aa_row=5.*takes no image"):
        SFTCollator(tok, "llama")([{**make(None, media_files, row=5), "images": [media_files["image"]]}])
    with pytest.raises(CollatorError, match=r"#0.*'prompt' and 'completion'"):
        SFTCollator(tok, "llama")([{"text": "hi"}])
