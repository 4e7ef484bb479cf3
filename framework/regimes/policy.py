"""The policy seam of the RL regimes: who generates completions, and who scores their actions.

A regime such as GRPO asks a `Policy` for two things only:

1. `rollout(examples, sampling)`: one sampled completion per example, as a
   `Rollout` (the texts reward functions read, plus whatever tensors the
   policy needs to re-score it);
2. `logprobs(module, inputs, ...)`: per-position log-probs `[N, T]` of the
   rollout's actions under `module`, differentiable through its parameters.
   `module` is the policy's own `module` (every trainable parameter of the
   policy) or a frozen copy of it (the reference of a KL term).
   `rollout.action_mask` `[N, T]` marks which positions are actions.

`TokenPolicy` serves the text formats (cot, none, pause, hybrid): its `module` is
the causal LM and the actions are all completion tokens. `LatentPolicy`
(`framework.regimes.latent_policy`) serves the latent mode through the same
two calls: its `module` holds the LM and the thought projection; its rollout is
`framework.rollout.rollout_latent` (thoughts, then answer tokens); its `logprobs`
recomputes the thoughts from `module` (so they are a differentiable function
of the parameters) and scores only the tokens after `<eot>`, its actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from framework.data.collate import left_pad, right_pad
from framework.data.masks import IGNORE_INDEX
from framework.data.sample import Example
from framework.models.backbone import backbone_hidden_states, position_ids_from_mask, prompt_pass
from framework.regimes.loss import hidden_states_logprobs
from framework.rollout.generate import until_eos
from framework.rollout.sampling import SamplingConfig, sample

if TYPE_CHECKING:
    from framework.models.reasoner import Reasoner


@dataclass(frozen=True)
class Rollout:
    """N completions, one per row, with what rewards read and what the policy re-scores."""

    examples: list[Example]
    prompts: list[str]  # the prompt text the model read, reasoning markup included
    completions: list[str]  # the text it wrote, EOS excluded
    completion_ids: list[list[int]]  # the ids it wrote, EOS included when it stopped
    truncated: torch.Tensor  # [N] bool: cut by the length limit before EOS
    inputs: dict[str, torch.Tensor]  # policy-specific tensors, first dimension N
    action_mask: torch.Tensor  # [N, T] bool, aligned with `Policy.logprobs`

    def __len__(self) -> int:
        return len(self.examples)

    def rows(self, index: slice) -> Rollout:
        """The completions `index` selects (for micro-batches)."""
        return replace(
            self,
            examples=self.examples[index],
            prompts=self.prompts[index],
            completions=self.completions[index],
            completion_ids=self.completion_ids[index],
            truncated=self.truncated[index],
            inputs={key: value[index] for key, value in self.inputs.items()},
            action_mask=self.action_mask[index],
        )


@runtime_checkable
class Policy(Protocol):
    module: torch.nn.Module  # every parameter being trained; a frozen copy of it is the KL reference

    def rollout(self, examples: Sequence[Example], sampling: SamplingConfig) -> Rollout: ...

    def logprobs(
        self,
        module: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        *,
        temperature: float = 1.0,
        return_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


class TokenPolicy:
    """A text-format `Reasoner` (cot, none, pause, hybrid, ...) as a policy whose actions are its completion tokens.

    Rollouts are sampled left-padded with a KV cache (`sample`) and re-scored
    the same way: the prompts left-padded, each distinct one run once
    (`prompt_pass`), then every completion right-padded after its prompt's
    cache, so every token sits at the position it was generated at. The
    log-probs are `[N, C]`, C the longest completion.
    """

    def __init__(self, reasoner: Reasoner) -> None:
        if reasoner.latent is not None:  # its prompt holds thought slots that sampling tokens would not fill
            raise ValueError(
                f"reasoner mode {reasoner.mode!r} has no token policy: TokenPolicy serves formats without thought "
                "slots (a latent reasoner's policy is framework.regimes.latent_policy.LatentPolicy)"
            )
        require_generation(reasoner)
        self.reasoner = reasoner
        self.module = reasoner.model

    def rollout(self, examples: Sequence[Example], sampling: SamplingConfig) -> Rollout:
        tokenizer = self.reasoner.tokenizer
        prompt_ids = [self.reasoner.prompt_ids(example) for example in examples]
        # Under a chat template a turn ends at its end-of-turn token, which is where sampling stops; a model that
        # writes EOS instead has stopped too, and nothing after it is scored (as `generate` reads completions).
        completion_ids = [until_eos(self.reasoner, ids) for ids in sample(
            self.module, prompt_ids, pad_token_id=tokenizer.pad_token_id, eos_token_id=self.reasoner.stop_token_id,
            config=sampling)]
        completions, finished = decode_completions(tokenizer, completion_ids, self.reasoner.stop_token_id)
        prompts = ["".join(segment.text for segment in self.reasoner.prompt_segments(e)) for e in examples]
        inputs = rollout_inputs(prompt_ids, completion_ids, tokenizer.pad_token_id, self.module.device)
        return Rollout(
            examples=list(examples),
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids,
            truncated=torch.tensor([not done for done in finished]),
            inputs=inputs,
            action_mask=inputs["completion_attention_mask"].bool(),
        )

    def logprobs(
        self,
        module: PreTrainedModel,
        inputs: dict[str, torch.Tensor],
        *,
        temperature: float = 1.0,
        return_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Log-probs `[N, C]` of the completion tokens under `module` (differentiably); padding holds 0."""
        prompt_ids, prompt_mask, completion_ids, completion_mask = checked_inputs(inputs, "TokenPolicy")
        prompt_hidden, cache = prompt_pass(module, prompt_ids, prompt_mask)
        return completion_logprobs_after(module, prompt_hidden[:, -1:], cache, prompt_mask, completion_ids,
                                         completion_mask, temperature=temperature, return_entropy=return_entropy)


def require_generation(reasoner: Reasoner) -> None:
    """A policy samples: the reasoner's model must be a causal LM with a head, not a bare backbone."""
    can_generate = getattr(reasoner.model, "can_generate", None)
    if can_generate is None or not can_generate():
        raise ValueError(
            f"the reasoner's model {type(reasoner.model).__name__} cannot generate: a policy needs a causal LM "
            "with a language-model head (AutoModelForCausalLM), not a bare backbone"
        )


def decode_completions(
    tokenizer: PreTrainedTokenizerBase, completion_ids: Sequence[Sequence[int]], stop_token_id: int
) -> tuple[list[str], list[bool]]:
    """The text of each completion (its final stop token excluded, other special tokens kept for reward functions to
    see), and whether it ended with `stop_token_id` (`Reasoner.stop_token_id`: EOS, or a chat template's end of
    turn) or with EOS."""
    finished = [bool(ids) and ids[-1] in (stop_token_id, tokenizer.eos_token_id) for ids in completion_ids]
    texts = [
        tokenizer.decode(ids[:-1] if done else ids, skip_special_tokens=False) for ids, done in zip(completion_ids, finished)
    ]
    return texts, finished


INPUT_KEYS = ("prompt_ids", "prompt_attention_mask", "completion_ids", "completion_attention_mask")


def rollout_inputs(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_token_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """`Rollout.inputs` of both policies: the prompts left-padded (`[N, P]`, as sampled), the completions
    right-padded (`[N, C]`; their mask is the rollout's action mask)."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_token_id, device)
    completion_ids, completion_mask = right_pad(completions, pad_token_id, device)
    return dict(zip(INPUT_KEYS, (prompt_ids, prompt_mask, completion_ids, completion_mask)))


def checked_inputs(inputs: dict[str, torch.Tensor], policy: str) -> tuple[torch.Tensor, ...]:
    """`inputs`' four tensors (`INPUT_KEYS`), or a ValueError naming what does not fit."""
    missing = [key for key in INPUT_KEYS if key not in inputs]
    if missing:
        raise ValueError(f"inputs lack {missing}: {policy}.logprobs takes the inputs of its own rollouts")
    prompt_ids, prompt_mask, completion_ids, completion_mask = (inputs[key] for key in INPUT_KEYS)
    if prompt_ids.shape != prompt_mask.shape or completion_ids.shape != completion_mask.shape:
        raise ValueError(
            f"inputs: prompt_ids {tuple(prompt_ids.shape)} / prompt_attention_mask {tuple(prompt_mask.shape)} and "
            f"completion_ids {tuple(completion_ids.shape)} / completion_attention_mask {tuple(completion_mask.shape)} "
            "must match pairwise"
        )
    if prompt_ids.shape[0] != completion_ids.shape[0]:
        raise ValueError(f"inputs: {prompt_ids.shape[0]} prompts but {completion_ids.shape[0]} completions")
    if prompt_ids.shape[1] < 1 or completion_ids.shape[1] < 1:
        raise ValueError("inputs: prompts and completions need at least one column each")
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def completion_logprobs_after(
    model: PreTrainedModel,
    last_prompt_hidden: torch.Tensor,
    cache: Cache,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float,
    return_entropy: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs `[N, C]` of right-padded completions, run after their left-padded prompts' `cache`;
    `last_prompt_hidden` `[N, 1, H]` is the last prompt column's hidden state, which predicts the first completion
    token. The completions are embedded as tokens, whatever their ids: a `<latent>` a policy sampled is a token here.
    """
    if cache.get_seq_length() != prompt_mask.shape[1]:
        # transformers' checkpointed layers drop the cache in training: the completions would be scored blind.
        raise ValueError(
            f"the prompts' cache holds {cache.get_seq_length()} of their {prompt_mask.shape[1]} columns: a policy "
            "scores completions against it, which activation (gradient) checkpointing does not keep; turn it off"
        )
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    completion_hidden = backbone_hidden_states(
        model, completion_ids, attention_mask,
        position_ids=position_ids_from_mask(attention_mask)[:, prompt_mask.shape[1]:], cache=cache,
    )
    hidden = torch.cat([last_prompt_hidden, completion_hidden], dim=1)  # the scorer shifts by one
    labels = completion_ids.masked_fill(~completion_mask.bool(), IGNORE_INDEX)
    labels = torch.cat([labels.new_full((labels.shape[0], 1), IGNORE_INDEX), labels], dim=1)
    return hidden_states_logprobs(model, hidden, labels, temperature=temperature, return_entropy=return_entropy)
