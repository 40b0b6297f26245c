"""PPO (actor-critic, GAE, clipped objective, KL to the reference) on TRL's experimental PPO trainer, any modality.

What is TRL's and what aa_lib adds:
- `PPOConfig` is TRL's (`trl.experimental.ppo.PPOConfig`: clip ranges, GAE gamma/lambda, kl_coef, response_length,
  temperature, ...) plus the paper's critic knobs (Table 8): its own learning rate, scheduler and warmup.
- `PPOTrainer` subclasses TRL's. TRL trains policy and critic with one optimizer at one learning rate; we build
  two parameter groups with separate learning rates and a per-group schedule (actor cosine, critic constant).
- Text prompts run TRL's own `train()` loop unchanged. TRL's loop passes only `input_ids` to the policy, reference,
  value and reward models, so batches that carry media (pixel_values, input_features, video grids...) run
  `_train_with_media`, the same algorithm written compactly with TRL's pieces (PolicyAndValueWrapper, its
  masked whitening, response truncation, selective_log_softmax, unwrap_model_for_generation) where every forward
  and `generate` also receives the batch's media tensors.
- Value and reward models follow TRL's protocol (a backbone named by `base_model_prefix`, plus a `score` head):
  `build_score_model` makes one from the policy's checkpoint for any aa_lib family (AutoModelForSequenceClassification
  for text, `ScoreModel` around the multimodal backbone otherwise).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import GenerationConfig, get_scheduler
from trl.experimental.ppo import PPOConfig as TRLPPOConfig
from trl.experimental.ppo import PPOTrainer as TRLPPOTrainer
from trl.experimental.ppo.ppo_trainer import INVALID_LOGPROB, masked_mean, masked_whiten, truncate_response
from trl.experimental.utils import first_true_indices
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import selective_log_softmax

from aa_lib.collators import PromptCollator
from aa_lib.models import family_for_model_type, get_family, load_model, media_token_ids
from aa_lib.train.common import AAOptions, load_for_training, peft_config_for, save_trained
from aa_lib.train.launch import launchable

# Keys of a prompt batch that are not media: everything else goes to every model's forward and `generate`.
_TEXT_KEYS = ("input_ids", "attention_mask")
# Per-token media keys (Qwen2-VL's mm_token_type_ids): extended with zeros over the response tokens.
_PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")
# Families whose rotary positions are not 1-D (Qwen2-VL's M-RoPE): the model derives them from the mask itself.
_OWN_POSITIONS = ("qwen2_vl",)


@dataclass
class PPOConfig(AAOptions, TRLPPOConfig):
    """TRL's PPOConfig plus the paper's separate critic schedule (Table 8). `learning_rate`, `lr_scheduler_type`
    and `warmup_steps` (a ratio when < 1) are the actor's; `temperature` is the rollout sampling temperature,
    set per modality by `aa_lib.presets`."""

    critic_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate of the value model (None: the actor's learning_rate)."})
    critic_lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Scheduler of the value model ('constant' warms up when "
                                              "critic_warmup_ratio > 0)."})
    critic_warmup_ratio: float = field(default=0.0, metadata={"help": "Warmup share of the value model's schedule."})
    max_length: int = field(
        default=2048, metadata={"help": "Longest prompt + response in tokens; longer prompts are an error."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    stop_token: str | None = field(default="eos", metadata={"help": "Responses end at the tokenizer's EOS ('eos') "
                                                                    "or run to response_length (None)."})
    num_ppo_epochs: int = field(default=1, metadata={"help": "PPO update epochs over each rollout batch."})
    num_sample_generations: int = field(
        default=0, metadata={"help": "Debug sample generations during training (0: none)."})


# ---------------------------------------------------------------------------------------------------- models
class ScoreModel(nn.Module):
    """A sequence scorer in the shape TRL's PPO expects from AutoModelForSequenceClassification: a backbone named by
    `base_model_prefix` that returns hidden states, and a linear `score` head (one value per token)."""

    base_model_prefix = "backbone"

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.score = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(hidden_size + 1))

    def forward(self, **kwargs):
        out = self.backbone(**kwargs, output_hidden_states=True, return_dict=True, use_cache=False)
        return self.score(out.hidden_states[-1])


def build_score_model(policy_path, family: str | None = None, seed: int = 0) -> nn.Module:
    """A value (or reward) model initialised from the policy checkpoint's backbone, with a fresh scalar head.

    Text families: AutoModelForSequenceClassification (num_labels=1), exactly what TRL's PPO uses.
    Media families: `ScoreModel` around the multimodal backbone (`model.model`: towers, projector and language
    model), so images, video and audio reach the critic as they reach the policy.
    """
    import transformers as T

    config = T.AutoConfig.from_pretrained(policy_path)
    fam = get_family(family or family_for_model_type(config.model_type))
    torch.manual_seed(seed)
    if not fam.modalities:
        return T.AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1, dtype=torch.float32)
    full, _ = load_model(policy_path, family=fam.name)
    return ScoreModel(full.model, full.config.get_text_config().hidden_size)


# ---------------------------------------------------------------------------------------------------- batches
def _select(media: dict, idx) -> dict:
    """Rows `idx` of a media batch. Qwen2-VL flattens all images' patches into one tensor with a (t, h, w) grid
    per item, so its pixel tensors are sliced by the grid sizes rather than by row."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    out = {}
    for k, v in media.items():
        grid_key = {"pixel_values": "image_grid_thw", "pixel_values_videos": "video_grid_thw"}.get(k)
        if grid_key in media:
            sizes = media[grid_key].prod(-1)
            starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
            out[k] = torch.cat([v[starts[i]: starts[i] + sizes[i]] for i in idx.tolist()])
        else:
            out[k] = v[idx.to(v.device)]
    return out


def _takes_media(model: nn.Module) -> bool:
    """A text-only reward model scores the text alone; media families see the media too."""
    try:
        return bool(get_family(family_for_model_type(model.config.model_type)).modalities)
    except (KeyError, AttributeError):
        return True  # an unknown scorer: give it everything


def _positions(model, attention_mask) -> dict:
    """1-D positions that skip left padding, as `generate` uses them (TRL's `forward` does the same)."""
    mt = getattr(getattr(model, "config", None), "model_type", "")
    if mt in _OWN_POSITIONS:
        return {}
    return {"position_ids": (attention_mask.cumsum(1) - attention_mask.long()).clamp(min=0)}


def _score(model, input_ids, attention_mask, media) -> torch.Tensor:
    """Per-token scores of a TRL-protocol scorer (value or reward model) with media: (batch, seq)."""
    backbone = getattr(model, model.base_model_prefix)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, **(media if _takes_media(model) else {}),
                   **_positions(model, attention_mask), output_hidden_states=True, return_dict=True, use_cache=False)
    return model.score(out.hidden_states[-1]).squeeze(-1)


def _reward(model, input_ids, attention_mask, media, seq_end) -> torch.Tensor:
    """One reward per row at each response's last token. Takes TRL-protocol scorers and aa_lib's multimodal
    `aa_lib.train.reward.RewardModel` (which reads the last token under the mask: here, the response end)."""
    if hasattr(model, "score") and hasattr(model, "base_model_prefix"):
        per_token = _score(model, input_ids, attention_mask, media)
        return per_token[torch.arange(len(per_token), device=per_token.device), seq_end]
    return model(input_ids=input_ids, attention_mask=attention_mask, **(media if _takes_media(model) else {}))


# ---------------------------------------------------------------------------------------------------- trainer
def distinct_pad(processing_class):
    """The processor itself, or a copy whose tokenizer pads with its unk token when it padded with EOS.

    TRL's PPO finds padding by value (`ids != pad_token_id` is its attention mask; the first pad ends a response):
    with pad = eos, as in SmolLM2-Instruct, every end of turn of a ChatML prompt would drop out of attention and the
    response's EOS would never be trained. unk (which a byte-level BPE never produces) is a token id the model has."""
    import copy

    tok = getattr(processing_class, "tokenizer", processing_class)
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return processing_class
    if tok.unk_token_id is None or tok.unk_token_id in (tok.eos_token_id, tok.bos_token_id):
        raise ValueError(f"PPO needs a pad token other than EOS ({tok.eos_token!r}) and the tokenizer has no unk "
                         f"token to pad with: set tokenizer.pad_token to a token the model never produces")
    processing_class = copy.deepcopy(processing_class)
    getattr(processing_class, "tokenizer", processing_class).pad_token = tok.unk_token
    return processing_class


class PPOTrainer(TRLPPOTrainer):
    """TRL's PPOTrainer with a separate critic learning rate/schedule, and media passed to every model.

    `train_dataset`: TRL conversational examples with `prompt` (+ `images` / `videos` / `audios` for media
    families). Without a `data_collator`, `aa_lib.collators.PromptCollator` renders, tokenizes and left-pads them.
    """

    def __init__(self, args: PPOConfig, processing_class, model, ref_model, reward_model, train_dataset,
                 value_model, data_collator=None, eval_dataset=None, **kwargs):
        family = family_for_model_type(model.config.model_type)
        processing_class = distinct_pad(processing_class)
        if data_collator is None:
            data_collator = PromptCollator(processing_class, family, max_length=args.max_length - args.response_length,
                                           num_frames=args.num_frames)
        self.aa_family = get_family(family)
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if args.stop_token == "eos":  # TRL reads eos from processing_class, which a multimodal processor lacks
            args.stop_token, args.stop_token_id = None, self.tokenizer.eos_token_id
        super().__init__(args=args, processing_class=processing_class, model=model, ref_model=ref_model,
                         reward_model=reward_model, train_dataset=train_dataset, value_model=value_model,
                         data_collator=data_collator, eval_dataset=eval_dataset, **kwargs)

    # -- separate critic optimisation (paper Table 8) --
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            wrapper = self.model  # TRL's PolicyAndValueWrapper: .policy, .value_model
            decay = set(self.get_decay_parameter_names(wrapper))
            args = self.args
            critic_lr = args.critic_learning_rate if args.critic_learning_rate is not None else args.learning_rate
            groups = []
            for role, prefix, lr in (("actor", "policy.", args.learning_rate), ("critic", "value_model.", critic_lr)):
                for wd in (True, False):
                    params = [p for n, p in wrapper.named_parameters()
                              if n.startswith(prefix) and p.requires_grad and (n in decay) == wd]
                    if params:
                        groups.append({"params": params, "lr": lr, "role": role,
                                       "weight_decay": args.weight_decay if wd else 0.0})
            cls, kwargs = self.get_optimizer_cls_and_kwargs(args, wrapper)
            kwargs.pop("lr", None)
            self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            args = self.args

            def lr_lambda(kind, warmup):
                # transformers' own schedule functions, taken from a throwaway one-parameter optimizer
                if kind == "constant" and warmup > 0:
                    kind = "constant_with_warmup"
                steps = int(warmup) if warmup >= 1 else math.ceil(num_training_steps * warmup)
                dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
                return get_scheduler(kind, dummy, num_warmup_steps=steps,
                                     num_training_steps=num_training_steps).lr_lambdas[0]

            actor = lr_lambda(str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)), args.warmup_steps)
            critic = lr_lambda(args.critic_lr_scheduler_type, args.critic_warmup_ratio)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, [actor if g["role"] == "actor" else critic for g in optimizer.param_groups])
        return self.lr_scheduler

    # -- rollouts and updates --
    def train(self):
        if self.aa_family.modalities:
            return self._train_with_media()
        return super().train()  # text: TRL's loop as is

    def _logprobs_values(self, model, query_responses, attention_mask, media, context_length, temperature):
        """Policy log-probs of the response tokens and critic values, through the prepared (DDP/DeepSpeed) wrapper
        so that gradients synchronise across processes."""
        output, vpred = model(input_ids=query_responses, attention_mask=attention_mask, **media,
                              **_positions(self.policy_model, attention_mask),
                              return_dict=True, output_hidden_states=True)
        logits = output.logits[:, context_length - 1: -1] / (temperature + 1e-7)
        return logits, vpred[:, context_length - 1: -1].squeeze(-1)

    def _train_with_media(self):
        args, accelerator, model, optimizer = self.args, self.accelerator, self.model, self.optimizer
        device, tok = accelerator.device, self.tokenizer
        pad_id = tok.pad_token_id
        # A sampled media placeholder (e.g. <|AUDIO|>) would make prompt + response hold more placeholders than
        # the batch has media features, and the next forward fails: never sample one.
        media_ids = media_token_ids(self.processing_class, self.aa_family.name)
        gen_kwargs = {"max_new_tokens": args.response_length, "temperature": args.temperature + 1e-7,
                      "top_k": 0, "top_p": 1.0, "do_sample": True, "pad_token_id": pad_id,
                      "suppress_tokens": sorted(set(media_ids.values()))}
        generation_config = GenerationConfig(**gen_kwargs)

        def batches():
            while True:
                yield from self.dataloader

        it = batches()
        model.train()
        self.state.global_step, self.state.episode = 0, 0
        self.state.max_steps = args.num_total_batches
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        start = time.time()
        for update in range(1, args.num_total_batches + 1):
            self.state.episode += args.batch_size
            data = {k: v.to(device) if hasattr(v, "to") else v for k, v in next(it).items()}
            queries, query_mask = data["input_ids"], data["attention_mask"]
            media = {k: v for k, v in data.items() if k not in _TEXT_KEYS}
            context_length = queries.shape[1]
            with torch.no_grad():
                with unwrap_model_for_generation(model, accelerator, generation_kwargs=gen_kwargs,
                                                 gather_deepspeed3_params=args.ds3_gather_for_generation) as unwrapped:
                    sequences = unwrapped.policy.generate(input_ids=queries, attention_mask=query_mask, **media,
                                                          generation_config=generation_config)
                responses = sequences[:, context_length:]
                query_responses = torch.cat([queries, responses], 1)
                media = {k: torch.cat([v, v.new_zeros(v.shape[0], responses.shape[1])], 1) if k in _PER_TOKEN_KEYS
                         else v for k, v in media.items()}
                # Causal models: tokens after a response's end cannot change earlier positions, so the mask needs
                # only the left padding; the end itself is handled by padding_mask below.
                attention_mask = torch.cat([query_mask, torch.ones_like(responses)], 1)
                logprobs_l, values_l, ref_l, scores_l = [], [], [], []
                step = args.local_rollout_forward_batch_size
                for i in range(0, queries.shape[0], step):
                    rows = list(range(i, min(i + step, queries.shape[0])))
                    qr, am, md = query_responses[rows], attention_mask[rows], _select(media, rows)
                    logits, value = self._logprobs_values(model, qr, am, md, context_length, args.temperature)
                    logprobs_l.append(selective_log_softmax(logits, responses[rows]))
                    values_l.append(value)
                    if self.ref_model is None:  # LoRA: the reference is the policy with its adapters off
                        with self.null_ref_context():
                            ref_out = accelerator.unwrap_model(model).policy(
                                input_ids=qr, attention_mask=am, **md, **_positions(self.policy_model, am))
                    else:
                        ref_out = self.ref_model(input_ids=qr, attention_mask=am, **md,
                                                 **_positions(self.ref_model, am))
                    ref_logits = ref_out.logits[:, context_length - 1: -1] / (args.temperature + 1e-7)
                    ref_l.append(selective_log_softmax(ref_logits, responses[rows]))
                    # the reward model reads the response cut at the stop token, ending at its last real token
                    post = responses[rows]
                    if self.stop_token_id is not None:
                        post = truncate_response(self.stop_token_id, pad_id, post)
                    post_mask = torch.cat([query_mask[rows], (post != pad_id).long()], 1)
                    seq_end = first_true_indices(post == pad_id) - 1 + context_length
                    scores_l.append(_reward(self.reward_model, torch.cat([queries[rows], post], 1), post_mask, md,
                                            seq_end))
                logprobs, values = torch.cat(logprobs_l), torch.cat(values_l)
                ref_logprobs, scores = torch.cat(ref_l), torch.cat(scores_l)

                post_all = responses if self.stop_token_id is None else truncate_response(
                    self.stop_token_id, pad_id, responses)
                sequence_lengths = first_true_indices(post_all == pad_id) - 1
                if args.missing_eos_penalty is not None:
                    scores[~torch.any(post_all == tok.eos_token_id, dim=-1)] -= args.missing_eos_penalty
                # From here on: TRL's reward shaping, GAE and whitening, term for term.
                idxs = torch.arange(responses.shape[1], device=device).repeat(responses.shape[0], 1)
                padding_mask = idxs > sequence_lengths.unsqueeze(1)
                logprobs = logprobs.masked_fill(padding_mask, INVALID_LOGPROB)
                ref_logprobs = ref_logprobs.masked_fill(padding_mask, INVALID_LOGPROB)
                padding_mask_p1 = idxs > (sequence_lengths + 1).unsqueeze(1)
                values = values.masked_fill(padding_mask_p1, 0)
                logr = ref_logprobs - logprobs
                kl = -logr if args.kl_estimator == "k1" else (logr.exp() - 1) - logr
                non_score_reward = -args.kl_coef * kl
                rewards = non_score_reward.clone()
                end = torch.where(sequence_lengths + 1 < rewards.size(1), sequence_lengths + 1, sequence_lengths)
                rewards[torch.arange(rewards.size(0), device=device), end] += scores
                if args.whiten_rewards:
                    rewards = masked_whiten(rewards, ~padding_mask_p1, shift_mean=False).masked_fill(padding_mask_p1, 0)
                advantages, returns = gae(rewards, values, args.gamma, args.lam)
                advantages = masked_whiten(advantages, ~padding_mask).masked_fill(padding_mask, 0)

            stats = {k: [] for k in ("loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg", "policy/approxkl_avg",
                                     "policy/entropy_avg")}  # per microbatch; their means are logged
            for _ in range(args.num_ppo_epochs):
                order = np.random.permutation(args.local_batch_size)
                for mb_start in range(0, args.local_batch_size, args.local_mini_batch_size):
                    mini = order[mb_start: mb_start + args.local_mini_batch_size]
                    for mc_start in range(0, args.local_mini_batch_size, args.per_device_train_batch_size):
                        mb = mini[mc_start: mc_start + args.per_device_train_batch_size].tolist()
                        with accelerator.accumulate(model):
                            logits, vpred = self._logprobs_values(model, query_responses[mb], attention_mask[mb],
                                                                  _select(media, mb), context_length, args.temperature)
                            new_logprobs = selective_log_softmax(logits, responses[mb]).masked_fill(
                                padding_mask[mb], INVALID_LOGPROB)
                            vpred = vpred.masked_fill(padding_mask_p1[mb], 0)
                            vclip = torch.clamp(vpred, values[mb] - args.cliprange_value,
                                                values[mb] + args.cliprange_value)
                            vf_loss = 0.5 * masked_mean(torch.max((vpred - returns[mb]) ** 2,
                                                                  (vclip - returns[mb]) ** 2), ~padding_mask_p1[mb])
                            diff = new_logprobs - logprobs[mb]
                            ratio = diff.exp()
                            pg1 = -advantages[mb] * ratio
                            pg2 = -advantages[mb] * torch.clamp(ratio, 1 - args.cliprange, 1 + args.cliprange)
                            pg_loss = masked_mean(torch.max(pg1, pg2), ~padding_mask[mb])
                            loss = pg_loss + args.vf_coef * vf_loss
                            accelerator.backward(loss)
                            optimizer.step()
                            optimizer.zero_grad()
                        with torch.no_grad():
                            probs = logits.softmax(-1)
                            entropy = torch.logsumexp(logits, -1) - (probs * logits).sum(-1)
                            stats["loss/policy_avg"].append(pg_loss.item())
                            stats["loss/value_avg"].append(vf_loss.item())
                            stats["policy/clipfrac_avg"].append(
                                masked_mean((pg2 > pg1).float(), ~padding_mask[mb]).item())
                            stats["policy/approxkl_avg"].append(0.5 * (diff ** 2).mean().item())
                            stats["policy/entropy_avg"].append(entropy.mean().item())
            metrics = {"eps": int(self.state.episode / max(time.time() - start, 1e-9)),
                       "objective/kl": kl.sum(1).mean().item(), "objective/scores": scores.mean().item(),
                       "objective/non_score_reward": non_score_reward.sum(1).mean().item(),
                       **{k: float(np.mean(v)) for k, v in stats.items()},
                       "lr": self.lr_scheduler.get_last_lr()[0], "episode": self.state.episode}
            self.state.epoch = self.state.episode / self.train_dataset_len
            self.state.global_step += 1
            self.log(metrics)
            self.lr_scheduler.step()
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens, as in TRL's PPO loop: (advantages, returns)."""
    lastgaelam = 0
    reversed_adv = []
    n = rewards.shape[1]
    for t in reversed(range(n)):
        nextvalues = values[:, t + 1] if t < n - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        reversed_adv.append(lastgaelam)
    advantages = torch.stack(reversed_adv[::-1], 1)
    return advantages, advantages + values


def build_ppo_trainer(args: PPOConfig, policy_path, reward_model, train_dataset, value_model=None,
                      eval_dataset=None) -> PPOTrainer:
    """PPO from the policy checkpoint `policy_path` (frozen towers / LoRA as `args` says): the reference is a frozen
    copy (LoRA: the base model, adapters off), the value model is built from the policy's backbone unless given.
    `reward_model` is a model or a folder from `train_reward` (a folder is what a launched PPO can be given)."""
    if isinstance(reward_model, (str, os.PathLike)):
        from aa_lib.train.reward import load_reward_model

        reward_model = load_reward_model(reward_model)[0]
    policy, processor, family = load_for_training(policy_path, args)
    peft = peft_config_for(policy, family, args)
    ref = load_model(policy_path, family=family)[0] if peft is None else None
    value_model = value_model if value_model is not None else build_score_model(policy_path, family, seed=args.seed)
    return PPOTrainer(args=args, processing_class=processor, model=policy, ref_model=ref, reward_model=reward_model,
                      train_dataset=train_dataset, value_model=value_model, eval_dataset=eval_dataset,
                      peft_config=peft)


@launchable
def train_ppo(args: PPOConfig, policy_path, reward_model, train_dataset, value_model=None, eval_dataset=None):
    """`build_ppo_trainer`, train, and save the policy (adapters merged) to `args.output_dir`; returns that folder,
    as the other trainers do."""
    trainer = build_ppo_trainer(args, policy_path, reward_model, train_dataset, value_model, eval_dataset)
    trainer.train()
    return save_trained(trainer.policy_model, trainer.processing_class, args.output_dir, source_path=policy_path)
