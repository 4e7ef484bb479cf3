"""What every reasoning format is: example -> role-tagged segments, generated ids -> trace and answer.

A format owns the text only. Turning its segments into token ids is the
`Rendering`'s job (`framework.models.rendering`), and running the model is the
`Reasoner`'s and the rollouts', so a new format is one small class and works
with every rendering, regime and rollout unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from transformers import PreTrainedTokenizerBase

from framework.data.sample import Example, Segment

if TYPE_CHECKING:
    from framework.models.formats.latent import LatentConfig


@dataclass(frozen=True)
class Generation:
    """One decoded completion, split into trace and answer."""

    trace: str
    answer: str
    trace_tokens: int
    answer_tokens: int
    finished: bool  # ended with EOS rather than at the length limit
    thoughts: int = 0  # continuous thoughts computed before the completion (latent formats)
    # Whether the generated trace reached its closing token (`</think>`); None where the prompt already closed it.
    trace_closed: bool | None = None

    @property
    def num_tokens(self) -> int:
        """Sequential generation steps: tokens written plus continuous thoughts (as Coconut's Table 1 counts)."""
        return self.trace_tokens + self.answer_tokens + self.thoughts


class ReasoningFormat(ABC):
    """How an `Example` becomes the text a model reads (prompt) and writes (completion), and back.

    Subclasses set `name` (the `Reasoner`'s `mode`, and the name a checkpoint
    saves) and `required_tokens` (special tokens the tokenizer must hold), and
    implement the three methods below. `stage` is for formats with a
    curriculum (the latent one); the others reject any stage but None, so a
    caller that thinks it trains a curriculum learns it does not.
    """

    name: ClassVar[str]
    required_tokens: tuple[str, ...] = ()
    # Continuous thoughts: the config of a format whose prompt holds thought slots, else None. Regimes, rollouts and
    # the Reasoner read it to decide how to run the model, so they never need to know which format they serve.
    latent: LatentConfig | None = None

    @abstractmethod
    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """What the model is given at inference time."""

    @abstractmethod
    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """What the model is trained to write (the rendering closes it: EOS, or a chat template's end of turn)."""

    @abstractmethod
    def parse(self, completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
        """Split generated ids (EOS included if the model stopped) into trace and answer."""

    def options(self) -> dict[str, Any]:
        """JSON-able keyword options that rebuild this format as `format_for(self.name, **options)` (for checkpoints)."""
        return {}

    @property
    def stage(self) -> int:
        """The curriculum stage used when none is given; only staged formats have one."""
        raise ValueError(f"stages belong to the latent format; this reasoner's format is {self.name!r}")

    @stage.setter
    def stage(self, value: int) -> None:
        raise ValueError(f"stages belong to the latent format; this reasoner's format is {self.name!r}")

    def check_context(self, context: int) -> None:
        """Raise if the positions this format always fills cannot fit a model with `context` positions."""

    def _no_stage(self, stage: int | None) -> None:
        if stage is not None:
            raise ValueError(f"stage={stage} is for the latent format; this reasoner's format is {self.name!r}")


def parse_trace_then_answer(
    completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, trace_end: str
) -> Generation:
    """The trace runs up to and including `trace_end`, the answer after it; a trace never closed has no answer."""
    ids, finished = _strip_eos(completion_ids, tokenizer)
    end_id = tokenizer.convert_tokens_to_ids(trace_end)
    if end_id in ids:
        cut = ids.index(end_id)
        return _generation(tokenizer, ids[: cut + 1], ids[cut + 1 :], finished, trace_closed=True)
    return _generation(tokenizer, ids, [], finished, trace_closed=False)


def parse_answer_only(completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
    """Everything generated is the answer (formats whose prompt already closed the think block)."""
    ids, finished = _strip_eos(completion_ids, tokenizer)
    return _generation(tokenizer, [], ids, finished)


def _strip_eos(completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], bool]:
    ids = list(completion_ids)
    finished = bool(ids) and ids[-1] == tokenizer.eos_token_id
    return (ids[:-1] if finished else ids), finished


def _generation(
    tokenizer: PreTrainedTokenizerBase, trace_ids: Sequence[int], answer_ids: Sequence[int], finished: bool,
    trace_closed: bool | None = None,
) -> Generation:
    return Generation(
        trace=tokenizer.decode(trace_ids, skip_special_tokens=True).strip(),
        answer=tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
        trace_tokens=len(trace_ids),
        answer_tokens=len(answer_ids) + int(finished),  # EOS is part of the answer
        finished=finished,
        trace_closed=trace_closed,
    )
