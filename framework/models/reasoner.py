"""A causal LM plus its tokenizer and a reasoning mode.

The mode decides how an `Example` becomes text the model reads and writes:

- `cot`:   prompt `<think>` trace `</think>` answer
- `none`:  prompt `<think></think>` answer (the "non-thinking" mode: an empty
           think block is part of the prompt, as Qwen3 does)
- `pause`: prompt `<think>` k x `<pause>` `</think>` answer (compute without
           content: the fillers are given, never generated or trained on)
- `latent`: prompt `<think>` `<bot>` k x `<latent>` `<eot>` [remaining steps]
           `</think>` answer, where each `<latent>` slot holds a continuous
           thought (see `framework.models.latent` for the format, the
           curriculum stages and how thoughts are computed)

A latent reasoner formats at a curriculum stage: `tokenize(example, stage=s)`
for training, and `self.stage` (the final stage unless a regime sets it) for
`prompt_ids` and `generate`. Its completion parses like a `cot` one: the
language steps left before `</think>`, then the answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.sample import Example, Role, Segment
from framework.data.tokenize import TokenizedSample, tokenize_segments
from framework.data.tokenizer import LATENT, LATENT_END, LATENT_START, PAUSE, THINK_END, THINK_START, missing_tokens
from framework.io import atomic_directory
from framework.models.latent import LatentConfig, LatentProjection, latent_completion_segments, latent_prompt_segments
from framework.rollout.sampling import SamplingConfig, sample

if TYPE_CHECKING:
    from framework.rollout.latent import LatentRollout

Mode = Literal["cot", "none", "pause", "latent"]
MODES: tuple[str, ...] = ("cot", "none", "pause", "latent")
_REQUIRED_TOKENS = {
    "cot": (THINK_START, THINK_END),
    "none": (THINK_START, THINK_END),
    "pause": (THINK_START, THINK_END, PAUSE),
    "latent": (THINK_START, THINK_END, LATENT_START, LATENT, LATENT_END),
}
LATENT_CONFIG_FILE = "latent_config.json"
PROJECTION_FILE = "latent_projection.safetensors"


@dataclass(frozen=True)
class Generation:
    """One decoded completion, split into trace and answer."""

    trace: str
    answer: str
    trace_tokens: int
    answer_tokens: int
    finished: bool  # ended with EOS rather than at the length limit
    thoughts: int = 0  # continuous thoughts computed before the completion (latent mode)

    @property
    def num_tokens(self) -> int:
        """Sequential generation steps: tokens written plus continuous thoughts (as Coconut's Table 1 counts)."""
        return self.trace_tokens + self.answer_tokens + self.thoughts


class Reasoner:
    """A causal LM, its tokenizer and a reasoning mode.

    Args:
        model: any `AutoModelForCausalLM`.
        tokenizer: holds the mode's special tokens (`add_reasoning_tokens` adds them).
        mode: `cot`, `none`, `pause` or `latent` (see the module docstring).
        pause_tokens: fillers of the `pause` mode.
        latent: thoughts and curriculum of the `latent` mode (default `LatentConfig()`).
        projection: the learned thought projection, when `latent.projection`
            is on (default: a fresh identity `LatentProjection`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        mode: Mode = "cot",
        *,
        pause_tokens: int = 8,
        latent: LatentConfig | None = None,
        projection: LatentProjection | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown reasoning mode {mode!r}; expected one of {list(MODES)}")
        if pause_tokens < 1 and mode == "pause":
            raise ValueError(f"pause_tokens must be >= 1 in pause mode, got {pause_tokens}")
        if mode != "latent" and (latent is not None or projection is not None):
            raise ValueError(f"latent= and projection= configure the 'latent' mode; this reasoner is in {mode!r} mode")
        self.latent = (latent or LatentConfig()) if mode == "latent" else None
        required = _REQUIRED_TOKENS[mode] + ((PAUSE,) if self.latent and self.latent.thought == "pause" else ())
        missing = missing_tokens(tokenizer, required)
        if missing:
            raise ValueError(
                f"the tokenizer lacks the {mode!r} reasoner's special tokens {missing}; add them with "
                "framework.data.tokenizer.add_reasoning_tokens(tokenizer, model) before building the Reasoner"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: a reasoner must know where its answer ends")
        if tokenizer.pad_token_id is None:
            # Common for base checkpoints (GPT-2, Llama); padding is always masked out.
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.mode = mode
        self.pause_tokens = pause_tokens
        self.think_end_id = tokenizer.convert_tokens_to_ids(THINK_END)
        self.projection: LatentProjection | None = None
        if self.latent is not None:
            self._check_context(self.latent.num_thoughts(self.latent.final_stage))
            self.latent_token_id = tokenizer.convert_tokens_to_ids(LATENT)
            self.latent_start_id = tokenizer.convert_tokens_to_ids(LATENT_START)
            if self.latent.projection:
                embedding = model.get_input_embeddings().weight
                self.projection = projection or LatentProjection(embedding.shape[1]).to(embedding.device, embedding.dtype)
            elif projection is not None:
                raise ValueError("a projection was given but latent.projection is False")
            self._stage = self.latent.final_stage

    def _check_context(self, thoughts: int) -> None:
        context = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)
        # <think>, <bot>, <eot> and at least one prompt and one answer token come on top of the thoughts.
        if context is not None and thoughts + 5 > context:
            raise ValueError(
                f"latent mode with {thoughts} thoughts (max_stage x thoughts_per_step) does not fit the model's "
                f"context of {context} positions"
            )

    @property
    def stage(self) -> int:
        """The latent curriculum stage that `prompt_ids`, `generate` and `tokenize` use by default."""
        if self.latent is None:
            raise ValueError(f"stages belong to the latent mode; this reasoner is in {self.mode!r} mode")
        return self._stage

    @stage.setter
    def stage(self, value: int) -> None:
        if self.latent is None:
            raise ValueError(f"stages belong to the latent mode; this reasoner is in {self.mode!r} mode")
        self._stage = self.latent.check_stage(value)

    # -- formatting ---------------------------------------------------------------------------

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """What the model is given at inference time (`stage`: latent mode only, default `self.stage`)."""
        if self.latent is not None:
            return latent_prompt_segments(example, self.latent, self._resolve_stage(stage))
        self._resolve_stage(stage)  # rejects a stage outside the latent mode
        if self.mode == "cot":
            return [Segment(Role.PROMPT, example.prompt + THINK_START)]
        if self.mode == "none":
            return [Segment(Role.PROMPT, example.prompt + THINK_START + THINK_END)]
        return [
            Segment(Role.PROMPT, example.prompt + THINK_START),
            Segment(Role.LATENT, PAUSE * self.pause_tokens),
            Segment(Role.PROMPT, THINK_END),
        ]

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """What the model is trained to write (`stage`: latent mode only, default `self.stage`)."""
        if self.latent is not None:
            return latent_completion_segments(example, self.latent, self._resolve_stage(stage))
        self._resolve_stage(stage)  # rejects a stage outside the latent mode
        answer = Segment(Role.ANSWER, example.answer)
        if self.mode == "cot":
            return [Segment(Role.TRACE, example.trace + THINK_END), answer]
        return [answer]

    def segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        return self.prompt_segments(example, stage) + self.completion_segments(example, stage)

    def tokenize(self, example: Example, stage: int | None = None) -> TokenizedSample:
        """The full training sequence, EOS included, with a role per token."""
        return tokenize_segments(self.tokenizer, self.segments(example, stage))

    def prompt_ids(self, example: Example, stage: int | None = None) -> list[int]:
        return tokenize_segments(self.tokenizer, self.prompt_segments(example, stage), add_eos=False).input_ids

    def _resolve_stage(self, stage: int | None) -> int | None:
        if stage is None:
            return self._stage if self.latent is not None else None
        if self.latent is None:
            raise ValueError(f"stage={stage} is for the latent mode; this reasoner is in {self.mode!r} mode")
        return self.latent.check_stage(stage)

    # -- parsing and generation ---------------------------------------------------------------

    def parse(self, completion_ids: Sequence[int]) -> Generation:
        """Split generated ids into trace and answer (a cot trace ends at `</think>`)."""
        ids = list(completion_ids)
        finished = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        if finished:
            ids = ids[:-1]
        if self.mode in ("cot", "latent"):
            if self.think_end_id in ids:
                cut = ids.index(self.think_end_id)
                trace_ids, answer_ids = ids[: cut + 1], ids[cut + 1 :]
            else:  # never closed its trace: everything is trace, there is no answer
                trace_ids, answer_ids = ids, []
        else:
            trace_ids, answer_ids = [], ids
        return Generation(
            trace=self._decode(trace_ids),
            answer=self._decode(answer_ids),
            trace_tokens=len(trace_ids),
            answer_tokens=len(answer_ids) + int(finished),
            finished=finished,
        )

    def generate(self, examples: Sequence[Example], config: SamplingConfig = SamplingConfig()) -> list[Generation]:
        """Batched generation for `examples` (left-padded, KV-cached; latent mode: thoughts first)."""
        if self.latent is not None:
            rollout = self.rollout_latent(examples, config)
            return [replace(self.parse(ids), thoughts=k) for ids, k in zip(rollout.completions, rollout.num_thoughts)]
        completions = sample(
            self.model,
            [self.prompt_ids(example) for example in examples],
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            config=config,
        )
        return [self.parse(ids) for ids in completions]

    def rollout_latent(
        self, examples: Sequence[Example], config: SamplingConfig = SamplingConfig(), *, return_thoughts: bool = False
    ) -> LatentRollout:
        """Latent mode: completions at `self.stage`, with the thoughts' hidden states `[B, k, H]` if asked."""
        from framework.rollout.latent import latent_rollout  # the rollout package imports the models package

        if self.latent is None:
            raise ValueError(f"rollout_latent needs the latent mode; this reasoner is in {self.mode!r} mode")
        return latent_rollout(
            self.model,
            [self.prompt_ids(example) for example in examples],
            latent_token_id=self.latent_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            config=config,
            projection=self.projection,
            return_thoughts=return_thoughts,
        )

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- persistence --------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Model and tokenizer in Hugging Face format, written atomically.

        A latent reasoner also writes its `LatentConfig` (`latent_config.json`)
        and, when on, its thought projection (`latent_projection.safetensors`);
        the directory still loads as a plain Hugging Face model.
        """
        with atomic_directory(path) as scratch:
            self.model.save_pretrained(scratch)
            self.tokenizer.save_pretrained(scratch)
            if self.latent is not None:
                (scratch / LATENT_CONFIG_FILE).write_text(json.dumps(self.latent.to_dict(), indent=2))
            if self.projection is not None:
                save_file({k: v.detach().contiguous().cpu() for k, v in self.projection.state_dict().items()},
                          scratch / PROJECTION_FILE)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, mode: Mode = "cot", **kwargs) -> Reasoner:
        """Load a saved reasoner; in latent mode the saved `LatentConfig` and projection come back too."""
        from framework.models.factory import load_pretrained

        model, tokenizer = load_pretrained(path)
        path = Path(path)
        if mode == "latent" and "latent" not in kwargs and (path / LATENT_CONFIG_FILE).is_file():
            kwargs["latent"] = LatentConfig.from_dict(json.loads((path / LATENT_CONFIG_FILE).read_text()))
        reasoner = cls(model, tokenizer, mode, **kwargs)
        if reasoner.projection is not None and "projection" not in kwargs:
            if not (path / PROJECTION_FILE).is_file():
                raise FileNotFoundError(f"{path} has no {PROJECTION_FILE}, but its latent config has projection on")
            reasoner.projection.load_state_dict(load_file(path / PROJECTION_FILE))
            reasoner.projection.to(next(model.parameters()).device)
        return reasoner
