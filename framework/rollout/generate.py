"""A `Reasoner`'s generations: prompts from its format, ids from a rollout, completions parsed back by the format.

This sits above `framework.models` (it runs rollouts, which the model layer
must not import) and below the regimes, which evaluate and sample through it.
A reasoner whose format has thought slots (`reasoner.latent`) thinks first
(`latent_rollout`); any other decodes straight from its prompt (`sample`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from framework.data.sample import Example
from framework.models.formats import Generation
from framework.models.reasoner import Reasoner
from framework.rollout.latent import LatentRollout, latent_rollout
from framework.rollout.sampling import SamplingConfig, cut_after_eos, sample


def generate(
    reasoner: Reasoner, examples: Sequence[Example], config: SamplingConfig = SamplingConfig()
) -> list[Generation]:
    """Batched generation for `examples` (left-padded, KV-cached; a latent reasoner thinks first)."""
    return generate_from_ids(reasoner, [reasoner.prompt_ids(example) for example in examples], config)


def generate_from_ids(
    reasoner: Reasoner, prompts: Sequence[Sequence[int]], config: SamplingConfig = SamplingConfig()
) -> list[Generation]:
    """`generate` for prompts already rendered by `reasoner.prompt_ids` (a caller that batches them keeps the ids)."""
    if reasoner.latent is not None:
        rollout = rollout_latent_from_ids(reasoner, prompts, config)
        return [
            replace(reasoner.parse(until_eos(reasoner, ids)), thoughts=k)
            for ids, k in zip(rollout.completions, rollout.num_thoughts)
        ]
    completions = sample(
        reasoner.model,
        prompts,
        pad_token_id=reasoner.tokenizer.pad_token_id,
        eos_token_id=reasoner.stop_token_id,
        config=config,
    )
    return [reasoner.parse(until_eos(reasoner, ids)) for ids in completions]


def until_eos(reasoner: Reasoner, ids: Sequence[int]) -> list[int]:
    """`ids` up to and including the first EOS: under a chat template decoding stops at the end of turn
    (`Reasoner.stop_token_id`), and a model that writes EOS instead has stopped too."""
    return cut_after_eos(ids, reasoner.tokenizer.eos_token_id)


def rollout_latent(
    reasoner: Reasoner,
    examples: Sequence[Example],
    config: SamplingConfig = SamplingConfig(),
    *,
    return_thoughts: bool = False,
) -> LatentRollout:
    """A latent reasoner's completions at its `stage`, with each row's thoughts `[k, H]` if asked."""
    return rollout_latent_from_ids(
        reasoner, [reasoner.prompt_ids(example) for example in examples], config, return_thoughts=return_thoughts
    )


def rollout_latent_from_ids(
    reasoner: Reasoner,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig = SamplingConfig(),
    *,
    return_thoughts: bool = False,
) -> LatentRollout:
    """`rollout_latent` for prompts already rendered by `reasoner.prompt_ids`."""
    if reasoner.latent is None:
        raise ValueError(f"rollout_latent needs the latent mode; this reasoner is in {reasoner.mode!r} mode")
    return latent_rollout(
        reasoner.model,
        prompts,
        latent_token_id=reasoner.latent_token_id,
        pad_token_id=reasoner.tokenizer.pad_token_id,
        eos_token_id=reasoner.stop_token_id,
        config=config,
        projection=reasoner.projection,
        match_norm=reasoner.latent.match_norm,
        return_thoughts=return_thoughts,
    )
