"""Tiny model families: build, reload offline with the Auto classes, process a real chat with media,
forward/backward/generate, determinism, and the byte-level tokenizer's handling of unseen words."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import transformers as T
from aa_lib import models as M

CORPUS = [
    "what colour is the shape", "the shape is a red circle on the left", "a blue square at the top",
    "a green triangle at the bottom right", "what pitch is the tone", "the tone is high", "the tone is low",
    "describe the video", "the circle moves to the right",
] * 5


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


def _video(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)


def _audio(freq=440.0):
    t = np.arange(8000) / 16000  # 0.5 s at 16 kHz
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# family -> (media kind, make media, processor keyword)
MEDIA = {
    "llava": ("image", _image, "images"),
    "qwen2_vl": ("image", _image, "images"),
    "qwen2_vl_video": ("video", _video, "videos"),
    "qwen2_audio": ("audio", _audio, "audio"),
    "chameleon": ("image", _image, "images"),
    "janus": ("image", _image, "images"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = M.build_tiny(family, tmp_path_factory.mktemp(family) / "model", CORPUS, seed=0)
        return cache[family]

    return get


def _inputs(family, processor, media_seed=0):
    key = family
    messages_text = "what colour is the shape"
    if family in ("llama", "qwen2"):
        chat = [{"role": "user", "content": messages_text}, {"role": "assistant", "content": "the shape is red"}]
        return processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt"), None
    kind, make, kw = MEDIA[key]
    chat = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": messages_text}]},
            {"role": "assistant", "content": [{"type": "text", "text": "the shape is red"}]}]
    # ChameleonProcessor drops its chat template on loading (no such __init__ argument); the tokenizer keeps it.
    render = processor if processor.chat_template else processor.tokenizer
    text = render.apply_chat_template(chat, tokenize=False)
    media = make(media_seed)
    extra = {"sampling_rate": 16000} if kind == "audio" else {}
    inputs = processor(text=[text], **{kw: [media]}, return_tensors="pt", **extra)
    return inputs, kind


def _labels(family, processor, input_ids):
    tok = getattr(processor, "tokenizer", processor)
    labels = input_ids.clone()
    for tid in M.media_token_ids(tok, family).values():
        labels[labels == tid] = -100
    return labels


def _media_reached_model(model, family):
    """A gradient in the media encoder; for Chameleon (argmax VQ: no gradient) in the image codes' embeddings."""
    if family == "chameleon":
        rows = sorted(model.model.vocabulary_mapping.image_tokens)
        return model.model.embed_tokens.weight.grad[rows].abs().sum() > 0
    fam = M.FAMILIES[family]
    assert fam.towers
    return any(p.grad is not None and p.grad.abs().sum() > 0
               for mod in M.submodules(model, fam.towers) for p in mod.parameters())


@pytest.mark.parametrize("family", ["llama", "qwen2", "llava", "qwen2_vl", "qwen2_audio", "chameleon", "janus"])
def test_family_roundtrip(built, family):
    path = built(family)
    fam = M.FAMILIES[family]
    model = getattr(T, fam.auto_class).from_pretrained(path)
    processor = (T.AutoProcessor if fam.modalities else T.AutoTokenizer).from_pretrained(path)
    inputs, kind = _inputs(family, processor)
    labels = _labels(family, processor, inputs["input_ids"])
    model.train()
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss), family
    out.loss.backward()
    if fam.modalities:
        assert _media_reached_model(model, family), f"{family}: the media did not reach the model"
    model.eval()
    n = inputs["input_ids"].shape[1]
    gen = model.generate(**inputs, max_new_tokens=3, min_new_tokens=2, do_sample=False)
    assert gen.shape[1] > n


def test_qwen2_vl_video(built):
    path = built("qwen2_vl")
    model = T.AutoModelForImageTextToText.from_pretrained(path)
    processor = T.AutoProcessor.from_pretrained(path)
    inputs, _ = _inputs("qwen2_vl_video", processor)
    assert "pixel_values_videos" in inputs
    labels = _labels("qwen2_vl", processor, inputs["input_ids"])
    out = model(**inputs, labels=labels)
    out.loss.backward()
    assert _media_reached_model(model, "qwen2_vl")
    gen = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 2


def test_same_seed_same_weights_and_tokenizer(tmp_path, built):
    a = built("llava")
    b = M.build_tiny("llava", tmp_path / "b", CORPUS, seed=0)
    c = M.build_tiny("llava", tmp_path / "c", CORPUS, seed=1)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)  # the seed matters
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


@pytest.mark.parametrize("family", ["qwen2", "llava"])
def test_unseen_word_is_not_unk_and_reload_tokenizes_alike(built, family):
    from tokenizers import Tokenizer

    path = built(family)
    tok = T.AutoTokenizer.from_pretrained(path)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    text = "the zebra-shaped Ünïcode glyph 12"
    assert "zebra" not in " ".join(CORPUS)
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == raw.encode(text).ids  # AutoTokenizer (maybe a model-specific class) did not re-tokenize
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert len(tok("the shape", add_special_tokens=False).input_ids) == 2  # corpus words are whole tokens


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_assistant_mask_and_generation_prompt(built, family):
    path = built(family)
    tok = T.AutoTokenizer.from_pretrained(path)
    chat = [{"role": "user", "content": "what colour is the shape"},
            {"role": "assistant", "content": "the shape is red"}]
    out = tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    mask = out["assistant_masks"]
    answer = [i for i, m in zip(out["input_ids"], mask) if m]
    assert tok.decode(answer).strip() == "the shape is red" + tok.eos_token
    # The prompt at generation time is a prefix of the training sequence (same tokens).
    prompt = tok.apply_chat_template(chat[:1], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert out["input_ids"][: len(prompt["input_ids"])] == prompt["input_ids"]


def test_template_rejects_media_the_family_cannot_take(built):
    tok = T.AutoTokenizer.from_pretrained(built("llava"))
    with pytest.raises(Exception, match="no audio input"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "audio"}]}], tokenize=False)


def test_load_model_and_family_table(built):
    for family in ("llava", "chameleon"):
        model, processor = M.load_model(built(family))
        fam = M.FAMILIES[family]
        assert model.config.model_type == fam.model_type and processor.chat_template
        assert M.submodules(model, fam.towers + fam.projectors)  # names resolve
        assert model.dtype == torch.float32
    with pytest.raises(KeyError, match="known"):
        M.get_family("gpt9")
    with pytest.raises(TypeError, match="hidden_sise"):
        M.build_tiny("llama", "/nonexistent/x", CORPUS, hidden_sise=3)


def test_chameleon_image_tokens_are_vocabulary_and_trainable(built):
    """Chameleon masks image-token logits in forward; a trainer's own loss on lm_head logits still trains them."""
    model, processor = M.load_model(built("chameleon"))
    pixels = processor.image_processor([_image(0)], return_tensors="pt")["pixel_values"]
    codes = model.model.get_image_tokens(pixels).long()  # transformers returns int32 ids
    image_vocab = set(model.model.vocabulary_mapping.image_tokens)
    assert codes.shape == (1, 16) and set(codes.flatten().tolist()) <= image_vocab
    tok = processor.tokenizer
    prompt = torch.tensor([tok("a red circle", add_special_tokens=False).input_ids])
    boi = torch.tensor([[tok.convert_tokens_to_ids("<racm3:break>")]])
    seq = torch.cat([prompt, boi, codes], dim=1)
    out = model(input_ids=seq)
    assert torch.all(out.logits[0, :, sorted(image_vocab)] == torch.finfo(out.logits.dtype).min)  # documented mask
    hidden = model.model(input_ids=seq).last_hidden_state
    logits = model.lm_head(hidden)[:, prompt.shape[1]:-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad[codes[0]].abs().sum() > 0


def test_janus_generates_and_decodes_an_image(built):
    model, processor = M.load_model(built("janus"))
    inputs = processor(text=["USER: a red circle\nASSISTANT:"], generation_mode="image", return_tensors="pt")
    torch.manual_seed(0)
    codes = model.generate(**inputs, generation_mode="image", do_sample=True, guidance_scale=2.0)
    assert codes.shape == (1, model.config.vision_config.num_image_tokens)
    assert int(codes.max()) < model.config.vq_config.num_embeddings
    pixels = model.decode_image_tokens(codes)
    assert pixels.shape == (1, 32, 32, 3) and torch.isfinite(pixels).all()
    images = M.janus_decode_images(model, processor, codes)
    assert len(images) == 1 and images[0].size == (32, 32) and images[0].mode == "RGB"


@pytest.mark.parametrize("family", ["llava", "qwen2_audio"])
def test_a_few_steps_lower_the_loss(built, family):
    model, processor = M.load_model(built(family))
    inputs, _ = _inputs(family, processor)
    labels = _labels(family, processor, inputs["input_ids"])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
