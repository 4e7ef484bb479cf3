"""A causal LM plus its tokenizer and a reasoning mode.

The mode decides how an `Example` becomes text the model reads and writes:

- `cot`:   prompt `<think>` trace `</think>` answer
- `none`:  prompt `<think></think>` answer (the "non-thinking" mode: an empty
           think block is part of the prompt, as Qwen3 does)
- `pause`: prompt `<think>` k x `<pause>` `</think>` answer (compute without
           content: the fillers are given, never generated or trained on)

The latent mode (continuous thoughts) plugs in at the same seams:
`prompt_segments`, `completion_segments` and `parse`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.sample import Example, Role, Segment
from framework.data.tokenize import TokenizedSample, tokenize_segments
from framework.data.tokenizer import PAUSE, THINK_END, THINK_START, missing_tokens
from framework.io import atomic_directory
from framework.rollout.sampling import SamplingConfig, sample

Mode = Literal["cot", "none", "pause"]
MODES: tuple[str, ...] = ("cot", "none", "pause")
_REQUIRED_TOKENS = {"cot": (THINK_START, THINK_END), "none": (THINK_START, THINK_END), "pause": (THINK_START, THINK_END, PAUSE)}


@dataclass(frozen=True)
class Generation:
    """One decoded completion, split into trace and answer."""

    trace: str
    answer: str
    trace_tokens: int
    answer_tokens: int
    finished: bool  # ended with EOS rather than at the length limit

    @property
    def num_tokens(self) -> int:
        return self.trace_tokens + self.answer_tokens


class Reasoner:
    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, mode: Mode = "cot", *, pause_tokens: int = 8
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown reasoning mode {mode!r}; expected one of {list(MODES)}")
        if pause_tokens < 1 and mode == "pause":
            raise ValueError(f"pause_tokens must be >= 1 in pause mode, got {pause_tokens}")
        missing = missing_tokens(tokenizer, _REQUIRED_TOKENS[mode])
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

    # -- formatting ---------------------------------------------------------------------------

    def prompt_segments(self, example: Example) -> list[Segment]:
        """What the model is given at inference time."""
        if self.mode == "cot":
            return [Segment(Role.PROMPT, example.prompt + THINK_START)]
        if self.mode == "none":
            return [Segment(Role.PROMPT, example.prompt + THINK_START + THINK_END)]
        return [
            Segment(Role.PROMPT, example.prompt + THINK_START),
            Segment(Role.LATENT, PAUSE * self.pause_tokens),
            Segment(Role.PROMPT, THINK_END),
        ]

    def completion_segments(self, example: Example) -> list[Segment]:
        """What the model is trained to write."""
        answer = Segment(Role.ANSWER, example.answer)
        if self.mode == "cot":
            return [Segment(Role.TRACE, example.trace + THINK_END), answer]
        return [answer]

    def segments(self, example: Example) -> list[Segment]:
        return self.prompt_segments(example) + self.completion_segments(example)

    def tokenize(self, example: Example) -> TokenizedSample:
        """The full training sequence, EOS included, with a role per token."""
        return tokenize_segments(self.tokenizer, self.segments(example))

    def prompt_ids(self, example: Example) -> list[int]:
        return tokenize_segments(self.tokenizer, self.prompt_segments(example), add_eos=False).input_ids

    # -- parsing and generation ---------------------------------------------------------------

    def parse(self, completion_ids: Sequence[int]) -> Generation:
        """Split generated ids into trace and answer (a cot trace ends at `</think>`)."""
        ids = list(completion_ids)
        finished = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        if finished:
            ids = ids[:-1]
        if self.mode == "cot":
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
        """Batched generation for `examples` (left-padded, KV-cached)."""
        completions = sample(
            self.model,
            [self.prompt_ids(example) for example in examples],
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            config=config,
        )
        return [self.parse(ids) for ids in completions]

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- persistence --------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Model and tokenizer in Hugging Face format, written atomically."""
        with atomic_directory(path) as scratch:
            self.model.save_pretrained(scratch)
            self.tokenizer.save_pretrained(scratch)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, mode: Mode = "cot", **kwargs) -> "Reasoner":
        from framework.models.factory import load_pretrained

        model, tokenizer = load_pretrained(path)
        return cls(model, tokenizer, mode, **kwargs)
