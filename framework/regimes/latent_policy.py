"""A latent reasoner as an RL policy: its actions are the tokens it writes after `<eot>`.

The thoughts are not actions: nothing is sampled there, each one is the
hidden state before its slot (through the projection, when there is one).
They are a differentiable function of the parameters, so the policy gradient
of the answer tokens reaches the thought path too, as in Coconut's training
forward.

Layout of `Rollout.inputs` (all first dimension N):

- `prompt_ids`, `prompt_attention_mask` `[N, P]`: the prompts left-padded,
  `<latent>` slots included, exactly as `latent_rollout` sampled them. All
  rows of a rollout share a stage, hence the same `<latent>` x k `<eot>`
  suffix, so their `<bot>` share a column (`collate_latent`'s alignment) and
  the thought walk is k columns long.
- `completion_ids`, `completion_attention_mask` `[N, C]`: the sampled tokens,
  right-padded; the mask is `Rollout.action_mask`.

`logprobs` runs the prompts through `run_with_thoughts` (the pass behind
`latent_forward`) and then the completions against its cache. Keeping the two
apart matters: a sampled completion may contain the `<latent>` token itself,
which the sampler embedded as a token; a single `latent_forward` over prompt +
completion would take it for a thought slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from framework.data.sample import Example
from framework.models.latent import run_with_thoughts
from framework.regimes.policy import (
    Rollout,
    checked_inputs,
    completion_logprobs_after,
    decode_completions,
    require_generation,
    rollout_inputs,
)
from framework.rollout.generate import rollout_latent, until_eos
from framework.rollout.sampling import SamplingConfig

if TYPE_CHECKING:
    from framework.models.reasoner import Reasoner


class LatentPolicy:
    """A `latent`-mode `Reasoner` as a `Policy` (see `framework.regimes.policy`).

    `module` is an `nn.ModuleDict` holding the reasoner's own LM (`"model"`)
    and, when its `LatentConfig.projection` is on, its thought projection
    (`"projection"`): every trainable parameter, so a deep copy of it is a
    complete KL reference. Rollouts are at the reasoner's current `stage`.
    """

    def __init__(self, reasoner: Reasoner) -> None:
        if reasoner.latent is None:
            raise ValueError(
                f"LatentPolicy needs a 'latent'-mode reasoner, got mode {reasoner.mode!r} (text modes use TokenPolicy)"
            )
        require_generation(reasoner)
        self.reasoner = reasoner
        parts = {"model": reasoner.model}
        if reasoner.projection is not None:
            parts["projection"] = reasoner.projection
        self.module = nn.ModuleDict(parts)

    def rollout(self, examples: Sequence[Example], sampling: SamplingConfig) -> Rollout:
        """Think, then sample one completion per example (`rollout_latent` at the reasoner's stage)."""
        tokenizer = self.reasoner.tokenizer
        sampled = rollout_latent(self.reasoner, examples, sampling)
        sampled_ids = [until_eos(self.reasoner, ids) for ids in sampled.completions]  # EOS ends a turn too
        completions, finished = decode_completions(tokenizer, sampled_ids, self.reasoner.stop_token_id)
        prompt_ids = [self.reasoner.prompt_ids(e) for e in examples]
        inputs = rollout_inputs(prompt_ids, sampled_ids, tokenizer.pad_token_id, self.reasoner.model.device)
        return Rollout(
            examples=list(examples),
            prompts=["".join(segment.text for segment in self.reasoner.prompt_segments(e)) for e in examples],
            completions=completions,
            completion_ids=sampled_ids,
            truncated=torch.tensor([not done for done in finished]),
            inputs=inputs,
            action_mask=inputs["completion_attention_mask"].bool(),
        )

    def logprobs(
        self,
        module: nn.Module,
        inputs: dict[str, torch.Tensor],
        *,
        temperature: float = 1.0,
        return_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Log-probs `[N, C]` of the completion tokens, thoughts recomputed from `module` (differentiably).

        `module` is `self.module` or a copy of it (a KL reference). Padding
        positions hold 0 (and entropy 0).
        """
        model, projection = _parts(module)
        prompt_ids, prompt_mask, completion_ids, completion_mask = checked_inputs(inputs, "LatentPolicy")
        thought_pass = run_with_thoughts(
            model, prompt_ids, prompt_mask, latent_token_id=self.reasoner.latent_token_id, projection=projection,
            match_norm=self.reasoner.latent.match_norm,
        )
        # The last prompt column (`<eot>`) predicts the first completion token.
        return completion_logprobs_after(model, thought_pass.hidden[:, -1:], thought_pass.cache, prompt_mask,
                                         completion_ids, completion_mask, temperature=temperature,
                                         return_entropy=return_entropy)


def _parts(module: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    if not isinstance(module, nn.ModuleDict) or "model" not in module:
        raise ValueError(
            f"module must be the LatentPolicy's nn.ModuleDict with a 'model' (and optional 'projection') entry, or a "
            f"copy of it; got {type(module).__name__}"
        )
    projection = module["projection"] if "projection" in module else None  # noqa: SIM401 (ModuleDict has no .get)
    return module["model"], projection
