"""The model every recipe trains: a tiny Hugging Face model from scratch, a local checkpoint or a named model."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

import kernels.hf_attention  # noqa: F401  (registers the "thoughtlab_decode" attention implementation)
from framework.data.tokenizer import add_reasoning_tokens, build_word_tokenizer
from framework.errors import ConfigError
from framework.models import Reasoner, build_model, load_pretrained, load_tokenizer

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class ModelConfig:
    """A tiny model of a Hugging Face family, or a local checkpoint directory or named pretrained model."""

    family: Literal["llama", "qwen3", "gpt2"] = "llama"
    size: Literal["1m", "20m"] = "1m"
    # A local HF directory or a named model (framework.models.pretrained.PRETRAINED: smollm2-135m-instruct);
    # overrides family and size.
    checkpoint: str | None = None
    # "thoughtlab_decode" runs one-position steps (thoughts, decoding) through kernels.decode_attention and the
    # rest through SDPA; it pays off on a GPU, where the Triton kernel runs.
    attention: Literal["sdpa", "eager", "thoughtlab_decode"] = "sdpa"
    # LoRA adapters of this rank on every linear layer but the head (peft; the base weights stay frozen); 0 trains
    # every weight. It fits a pretrained model's fine-tuning into a CPU budget.
    lora_rank: int = 0
    # How the format's text becomes ids: "chat" (the checkpoint's chat template: the prompt is the user turn, the
    # format's completion the assistant's; what an instruct model was trained on), "completion" (plain text), or
    # "auto": chat for a checkpoint whose tokenizer has a template, else completion.
    rendering: Literal["auto", "completion", "chat"] = "auto"

    def __post_init__(self) -> None:
        if self.rendering == "chat" and not self.checkpoint:
            raise ConfigError("model.rendering=chat needs model.checkpoint: a tiny model's word tokenizer has no chat "
                              "template")


def tokenizer_for(config: ModelConfig, vocabulary: Iterable[str]) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer with the reasoning tokens added, or a word tokenizer over `vocabulary`."""
    if config.checkpoint:
        tokenizer = load_tokenizer(config.checkpoint)
        add_reasoning_tokens(tokenizer)
        return tokenizer
    return build_word_tokenizer(vocabulary)


def model_for(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """The checkpoint grown to `tokenizer`'s reasoning tokens, or a fresh model over `tokenizer` (from `tokenizer_for`)."""
    if config.checkpoint:
        # The checkpoint's own tokenizer still lacks the reasoning tokens, so `add_reasoning_tokens` knows which
        # rows are new and starts them from their sub-word pieces' embeddings, even where the matrix already has
        # spare rows (Qwen's is padded past its vocabulary) that `tokenizer`, which already has them, could not
        # tell apart.
        model, own = load_pretrained(config.checkpoint)
        add_reasoning_tokens(own, model)
        if own.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"model.checkpoint={config.checkpoint}: the tokenizer given does not match the "
                             "checkpoint's own (build it with tokenizer_for(config, ...))")
    else:
        model = build_model(config.family, config.size, tokenizer, seed=seed)
    model.set_attn_implementation(config.attention)
    if config.lora_rank:
        from framework.models.lora import add_lora  # peft is in the `real` extra, needed only here

        model = add_lora(model, config.lora_rank)
    return model


def rendering_of(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """The rendering `config` asks for, with "auto" resolved against `tokenizer` (from `tokenizer_for`)."""
    if config.rendering != "auto":
        return config.rendering
    return "chat" if config.checkpoint and getattr(tokenizer, "chat_template", None) else "completion"


def reasoner_for(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int, format: str = "cot") -> Reasoner:
    """`model_for`'s model reasoning in `format`, its text rendered as `config` asks (`rendering_of`)."""
    return Reasoner(model_for(config, tokenizer, seed), tokenizer, format, rendering=rendering_of(config, tokenizer))


def model_and_tokenizer(
    config: ModelConfig, vocabulary: Iterable[str], seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`model_for` and `tokenizer_for` together: a model and the tokenizer it reads."""
    tokenizer = tokenizer_for(config, vocabulary)
    return model_for(config, tokenizer, seed), tokenizer


# Fine-tuning a pretrained checkpoint: every weight moves, so steps are small (1e-5 to 5e-5 is the usual range; a
# from-scratch rate such as 3e-3 drove SmolLM2's loss to 6.8 in issue 14). LoRA adapters start at zero and hold few
# parameters: 1e-4 to 3e-4 is peft's and TRL's usual range for them.
PRETRAINED_LR = 2e-5
PRETRAINED_LORA_LR = 2e-4
# Preference optimisation and RL move a pretrained policy more gently still: 1e-6 is the default of TRL's DPOConfig
# and GRPOConfig; LoRA again ten times that.
PRETRAINED_RL_LR = 1e-6
PRETRAINED_RL_LORA_LR = 1e-5
Objective = Literal["sft", "rl"]  # "rl" also covers preference optimisation (DPO)


def learning_rate(config: ModelConfig, lr: float | None, *, from_scratch: float, objective: Objective = "sft",
                  name: str = "lr") -> float:
    """The learning rate a recipe trains `config`'s model at: `lr` when set, else the one that suits the model.

    A recipe's own default (`from_scratch`) is tuned for tiny models trained
    from random weights; a checkpoint must not inherit it. So `lr=None` means
    `from_scratch` for a tiny model and, for a checkpoint, `PRETRAINED_LR`
    (`PRETRAINED_LORA_LR` with LoRA), or the RL rates for an `objective="rl"` stage.
    A rate that is set must be positive; `name` is its flag in the error.
    """
    if lr is not None:
        if not lr > 0:
            raise ConfigError(f"{name} must be positive, got {lr}")
        return lr
    if not config.checkpoint:
        return from_scratch
    if objective == "rl":
        return PRETRAINED_RL_LORA_LR if config.lora_rank else PRETRAINED_RL_LR
    return PRETRAINED_LORA_LR if config.lora_rank else PRETRAINED_LR


@dataclass
class StageConfig:
    """One training stage of a recipe: how many distinct problems it trains on, and its optimisation.

    `lr` unset (None) means the rate that suits the model (`learning_rate`, through `resolved`): the stage's
    `scratch_lr` for a tiny model from scratch, a pretrained rate for a checkpoint. A subclass sets `scratch_lr`
    and, for DPO or GRPO, `objective = "rl"`.
    """

    rows: int = 4000
    max_steps: int = 600
    batch_size: int = 32
    lr: float | None = None
    warmup_steps: int = 50

    scratch_lr: ClassVar[float] = 3e-3
    objective: ClassVar[Objective] = "sft"

    def resolved(self, model: ModelConfig, name: str) -> Self:
        """A copy whose `lr` is set: this stage's rate for `model`. A recipe resolves its stages before it trains
        (a bad rate is a `ConfigError` naming `--{name}.lr`)."""
        return replace(self, lr=learning_rate(model, self.lr, from_scratch=self.scratch_lr, objective=self.objective,
                                              name=f"{name}.lr"))
