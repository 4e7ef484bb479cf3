"""Batched, KV-cached rollouts of a latent reasoner: thoughts, then the answer.

Coconut's own `generate` is batch-1 and re-runs the whole embedded prefix for
every thought and every token. Here a batch of left-padded prompts (each
`prompt <think> <bot> <latent> x k <eot>`, as `Reasoner.prompt_ids` writes
them) is run once through `run_with_thoughts`: the prefix in one pass, one
cached position per thought. The cache then holds every prompt column but the
last, and the decode loop of `framework.rollout.sampling` continues from that
cache (it runs only the columns the cache lacks): greedy and sampled decoding,
`SamplingConfig` and EOS handling are exactly those of `sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from framework.data.collate import left_pad
from framework.eval_mode import eval_mode
from framework.models.latent import gather_thoughts, run_with_thoughts
from framework.rollout.sampling import SamplingConfig, generate_completions


@dataclass
class LatentRollout:
    """Completions of a batch of latent prompts.

    `completions[i]` are the tokens generated after row i's `<eot>` (cut after
    EOS, which is kept). `thoughts[i]`, when asked for, is `[num_thoughts[i], H]`:
    the hidden states fed to row i's slots (rows differ in length; nothing is
    padded). `num_thoughts[i]` and `num_tokens[i]` count row i's thoughts and
    generated tokens.
    """

    completions: list[list[int]]
    num_thoughts: list[int]
    num_tokens: list[int]
    thoughts: list[torch.Tensor] | None = None


@torch.no_grad()
def latent_rollout(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    latent_token_id: int,
    pad_token_id: int,
    eos_token_id: int,
    config: SamplingConfig = SamplingConfig(),
    projection: nn.Module | None = None,
    match_norm: bool = False,
    return_thoughts: bool = False,
) -> LatentRollout:
    """Think (one cached position per `<latent>` slot), then decode every prompt's completion.

    Prompts may differ in length and in their number of slots; a slot may not
    be a prompt's last token (the thought it would hold feeds nothing).
    Prompts without slots decode like `sample`.
    """
    if not prompts:
        return LatentRollout([], [], [], None)
    for row, prompt in enumerate(prompts):
        if len(prompt) < 2 or prompt[-1] == latent_token_id:
            raise ValueError(
                f"prompt {row} is shorter than two tokens or ends in a <latent> slot; latent prompts end with <bot> … <eot>"
            )
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
    with eval_mode(model):
        # Fill the cache for every column but the last: the decode loop runs that one and decodes on.
        filled = run_with_thoughts(
            model, input_ids[:, :-1], attention_mask[:, :-1], latent_token_id=latent_token_id, projection=projection,
            match_norm=match_norm,
        )
    completions = generate_completions(
        model,
        input_ids,
        attention_mask,
        eos_token_id=eos_token_id,
        config=config,
        cache=filled.cache,
    )
    return LatentRollout(
        completions=completions,
        num_thoughts=filled.slots.sum(1).tolist(),
        num_tokens=[len(completion) for completion in completions],
        thoughts=gather_thoughts(filled.hidden, filled.slots) if return_thoughts else None,
    )
