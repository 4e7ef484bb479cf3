"""How a format's segments become token ids: the step between a `ReasoningFormat` and the model.

A format says what text a row holds and which role each piece plays; a
rendering says how that text is laid out for the tokenizer. Keeping the two
apart lets every format render every way (composition, not one class per
pair): `CompletionRendering` concatenates the segments as plain text, and a
chat rendering would put the prompt segments in the user turn of the
tokenizer's chat template and the completion segments in the assistant turn.
Either way a rendering returns ids with one role per token, so masks,
regimes and rollouts never see which rendering was used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from framework.data.sample import Segment
from framework.data.tokenize import TokenizedSample, tokenize_segments


class Rendering(ABC):
    """Turns a format's prompt and completion segments into role-tagged token ids."""

    @abstractmethod
    def render(
        self, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Segment], completion: Sequence[Segment]
    ) -> TokenizedSample:
        """The full training sequence, EOS included, with a role per token."""

    @abstractmethod
    def render_prompt(self, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Segment]) -> list[int]:
        """The ids generation starts from: exactly the prefix of `render` before the completion."""


class CompletionRendering(Rendering):
    """Plain text, no template: the segments one after another (`tokenize_segments`), as a base model reads."""

    def render(
        self, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Segment], completion: Sequence[Segment]
    ) -> TokenizedSample:
        return tokenize_segments(tokenizer, [*prompt, *completion])

    def render_prompt(self, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Segment]) -> list[int]:
        return tokenize_segments(tokenizer, prompt, add_eos=False).input_ids
