"""Collators: labels on response tokens only, media tokens never truncated, mixed text/media batches."""
from __future__ import annotations

from pathlib import Path

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


# ----------------------------------------------------------------------------------------------------------------
# The encoding memo: same tensors as without it, hit on a row read again, a rewritten file read anew.


class CountingProcessor:
    """The processor, counting its calls (the encodings the memo saves)."""

    def __init__(self, processor):
        self.inner, self.calls = processor, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def assert_same_batch(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def counting_loads(monkeypatch, name):
    calls = []
    real = getattr(media, name)
    monkeypatch.setattr(media, name, lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    return calls


def test_memo_gives_the_uncached_tensors_and_skips_decoding(loaded, media_files, monkeypatch):
    _, proc = loaded("qwen2_vl")
    loads = counting_loads(monkeypatch, "load_video")
    exs = [make("video", media_files, row=0), make("image", media_files, row=1), make(None, media_files, row=2),
           make("image", media_files, q="describe the video", row=3)]
    cached, plain = PairCollator(proc, "qwen2_vl", max_length=128), PairCollator(proc, "qwen2_vl", max_length=128,
                                                                                 cache_size=0)
    want = plain(exs)
    assert len(loads) == 2  # uncached: the video is decoded for the chosen and again for the rejected row
    loads.clear()
    first, second = cached(exs), cached(exs)  # the second batch comes from the memo
    assert len(loads) == 1 and len(cached._memo) == 4
    assert_same_batch(first, want)
    assert_same_batch(second, want)
    # the same video file in a new example object is a hit too; SFT over epochs gives the uncached batch
    sft, sft_plain = SFTCollator(proc, "qwen2_vl", num_frames=2), SFTCollator(proc, "qwen2_vl", num_frames=2,
                                                                              cache_size=0)
    for _ in range(2):
        assert_same_batch(sft([make("video", media_files)]), sft_plain([make("video", media_files)]))


def test_memo_is_bounded(loaded, media_files):
    _, proc = loaded("qwen2_vl")
    coll = SFTCollator(proc, "qwen2_vl", cache_size=2)
    coll.processor = counter = CountingProcessor(proc)
    qs = ["what is in the image", "describe the video", "a red cat"]
    for q in qs + qs[-1:]:
        coll([make("image", media_files, q=q)])
    assert len(coll._memo) == 2 and counter.calls == 3  # the third prompt evicted the first; the repeat hit
    coll([make("image", media_files, q=qs[0])])
    assert counter.calls == 4
    # the memory bound: room for one row's pixel values keeps one row
    one = SFTCollator(proc, "qwen2_vl")
    one([make("image", media_files, q=qs[0])])
    row_mb = one._memo_bytes / 2 ** 20
    assert row_mb > 0
    small = SFTCollator(proc, "qwen2_vl", cache_megabytes=1.5 * row_mb)
    for q in qs:
        small([make("image", media_files, q=q)])
    assert len(small._memo) == 1 and 0 < small._memo_bytes <= small.cache_megabytes * 2 ** 20


def test_a_video_file_is_decoded_once_across_calls(tmp_path, monkeypatch):
    import av

    rng = np.random.RandomState(2)
    path = media.write_bytes_atomic(tmp_path / "clip.mp4", media.encode_mp4((rng.rand(5, 32, 32, 3) * 255).astype(
        np.uint8)))
    opens = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda f, *a, **kw: (opens.append(f) if isinstance(f, str) else None) or
                        real_open(f, *a, **kw))  # reads only (encode_mp4 writes to a buffer)
    first = media.load_video(str(path), num_frames=4)
    second = media.load_video(str(path), num_frames=4)  # another call (another collator): no second decode
    assert len(opens) == 1 and first.shape == (4, 32, 32, 3) and np.array_equal(first, second)
    second[:] = 0  # a caller writing into its copy leaves the cached frames alone
    assert np.array_equal(media.load_video(str(path), num_frames=4), first) and len(opens) == 1
    assert len(media.load_video(str(path))) == 5 and len(opens) == 2  # another frame count: another decode
    media.write_bytes_atomic(path, media.encode_mp4(np.zeros((5, 32, 32, 3), np.uint8)))  # replaced: read anew
    assert not np.array_equal(media.load_video(str(path), num_frames=4), first) and len(opens) == 3
    monkeypatch.setattr(media, "VIDEO_CACHE_BYTES", 8 * first.nbytes - 1)  # too big to keep: decoded every time
    other = media.write_bytes_atomic(tmp_path / "other.mp4", media.encode_mp4(
        (rng.rand(4, 32, 32, 3) * 255).astype(np.uint8)))
    media.load_video(str(other)), media.load_video(str(other))
    assert len(opens) == 5
    monkeypatch.setattr(media, "VIDEO_CACHE_BYTES", 0)  # off: what it held is not served either
    media.load_video(str(path), num_frames=4)
    assert len(opens) == 6


def test_file_rewritten_in_place_is_decoded_anew(loaded, tmp_path, monkeypatch):
    _, proc = loaded("qwen2_vl")
    rng = np.random.RandomState(1)
    path = tmp_path / "clip.mp4"
    path.write_bytes(media.encode_mp4((rng.rand(4, 32, 32, 3) * 255).astype(np.uint8)))
    files = {"video": str(path)}
    coll = PromptCollator(proc, "qwen2_vl")
    before = coll([make("video", files)])
    stat = path.stat()
    with open(path, "r+b") as f:  # same inode, new content
        f.write(media.encode_mp4((rng.rand(6, 32, 32, 3) * 255).astype(np.uint8)))
        f.truncate()
    assert (path.stat().st_mtime_ns, path.stat().st_size) != (stat.st_mtime_ns, stat.st_size)
    loads = counting_loads(monkeypatch, "load_video")
    after = coll([make("video", files)])
    assert len(loads) == 1
    assert_same_batch(after, PromptCollator(proc, "qwen2_vl", cache_size=0)([make("video", files)]))
    assert after["pixel_values_videos"].shape != before["pixel_values_videos"].shape
    # a folder of frames: one frame rewritten in place is read anew
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(2):
        (frames / f"{k:03d}.png").write_bytes(media.encode_png((rng.rand(32, 32, 3) * 255).astype(np.uint8)))
    folder = {"video": str(frames)}
    coll([make("video", folder)])
    n = len(loads)
    coll([make("video", folder)])
    assert len(loads) == n
    (frames / "001.png").write_bytes(media.encode_png(np.full((32, 32, 3), 200, np.uint8)))  # smaller file
    got = coll([make("video", folder)])
    assert len(loads) == n + 1
    assert_same_batch(got, PromptCollator(proc, "qwen2_vl", cache_size=0)([make("video", folder)]))
    # image bytes: a different image under the same prompt is a different key
    coll.processor = counter = CountingProcessor(proc)
    for seed in (0, 0, 1):
        png = media.encode_png((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8))
        coll([make("image", {"image": {"bytes": png, "path": None}})])
    assert counter.calls == 2


def test_popping_a_returned_encoding_does_not_change_the_next(loaded, media_files):
    _, proc = loaded("qwen2_vl")
    coll = SFTCollator(proc, "qwen2_vl")
    ex = make("image", media_files)
    ids, extra = coll._encode_prompt(ex["prompt"], ex, "x")
    want_ids, want = list(ids), dict(extra)
    assert "mm_token_type_ids" in extra  # the key _row pops
    extra.clear()
    ids.clear()
    ids2, extra2 = coll._encode_prompt(ex["prompt"], ex, "x")
    assert ids2 == want_ids and extra2.keys() == want.keys()
    assert all(torch.equal(extra2[k], want[k]) for k in want)
    # the batches built from the memo (where _row pops and re-adds mm_token_type_ids) stay equal too
    assert_same_batch(coll([ex, ex]), SFTCollator(proc, "qwen2_vl", cache_size=0)([ex, ex]))


def test_failing_rows_are_not_memoized(loaded, media_files, tmp_path):
    _, proc = loaded("qwen2_vl")
    coll = SFTCollator(proc, "qwen2_vl")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    for _ in range(2):
        with pytest.raises(CollatorError, match=r"aa_row=4: column 'videos': cannot decode video"):
            coll([make("video", {"video": str(bad)}, row=4)])
        with pytest.raises(CollatorError, match=r"aa_row=5: column 'videos': media file not found"):
            coll([make("video", {"video": str(tmp_path / "missing.mp4")}, row=5)])
        with pytest.raises(CollatorError, match=r"aa_row=6: column 'images': cannot decode image"):
            coll([make("image", {"image": {"bytes": b"not a png", "path": None}}, row=6)])
    assert len(coll._memo) == 0
    # the file fixed in place: it decodes now
    bad.write_bytes(Path(media_files["video"]).read_bytes())
    assert coll([make("video", {"video": str(bad)})])["pixel_values_videos"].shape[0] > 0


def test_image_output_memo(loaded, media_files):
    from aa_lib.collators import ImageOutputSFTCollator

    _, proc = loaded("janus")

    def row(q, answer, target, prompt_image=False, i=0):
        ex = make("image" if prompt_image else None, media_files, q=q, answer=answer, row=i)
        return {**ex, "completion_images": [target]}

    rng = np.random.RandomState(2)
    targets = [Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)) for _ in range(2)]
    exs = [row("a red cat", "", targets[0]), row("what is in the image", "a blue dog", targets[1], True, 1),
           row("a red cat", "", targets[1], i=2)]  # same prompt, another target image: a different target key
    coll = ImageOutputSFTCollator(proc, "janus")
    coll.processor = counter = CountingProcessor(proc)
    want = ImageOutputSFTCollator(proc, "janus", cache_size=0)(exs)
    assert_same_batch(coll(exs), want)
    assert counter.calls == 5  # 2 distinct prompts + 3 distinct targets
    assert_same_batch(coll(exs), want)
    assert counter.calls == 5
    with pytest.raises(CollatorError, match=r"aa_row=9: column 'completion_images': cannot decode image"):
        coll([row("a red cat", "", {"bytes": b"junk", "path": None}, i=9)])
