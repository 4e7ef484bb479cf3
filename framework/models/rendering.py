"""How a format's segments become token ids: the step between a `ReasoningFormat` and the model.

A format says what text a row holds and which role each piece plays; a
rendering says how that text is laid out for the tokenizer. Keeping the two
apart lets every format render every way (composition, not one class per
pair): `CompletionRendering` concatenates the segments as plain text, as a
base model reads; `ChatRendering` puts the user's text in the user turn of the
tokenizer's chat template and the reasoning and answer in the assistant turn,
as an instruct model reads. Either way a rendering returns ids with one role
per token, so masks, regimes and rollouts never see which rendering was used.
`RENDERINGS` names them, for checkpoints (`reasoning_format.json`) and CLIs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from transformers import PreTrainedTokenizerBase

from framework.data.sample import Role, Segment
from framework.data.tokenize import TokenizedSample, tokenize_segments
from framework.data.tokenizer import REASONING_TOKENS

Context = Sequence[Mapping[str, str]]  # messages before the user's (a system prompt, earlier turns), as TRL rows hold


class Rendering(ABC):
    """Turns a format's prompt and completion segments into role-tagged token ids.

    `context` is the conversation before the user's message (an example's
    `metadata["context_messages"]`, read from TRL rows); a rendering without
    turns has no place for it.
    """

    name: ClassVar[str]

    @abstractmethod
    def render(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt: Sequence[Segment],
        completion: Sequence[Segment],
        context: Context = (),
    ) -> TokenizedSample:
        """The full training sequence, its closing token(s) included, with a role per token."""

    @abstractmethod
    def render_prompt(
        self, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Segment], context: Context = ()
    ) -> list[int]:
        """The ids generation starts from: exactly the prefix of `render` before the completion."""

    def end_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The ids `render` closes a completion with, so the model learns to stop (EOS unless a template says)."""
        return [tokenizer.eos_token_id]

    def check(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Raise one clear line if `tokenizer` cannot be rendered this way (the `Reasoner` asks at construction)."""

    def options(self) -> dict[str, Any]:
        """JSON-able keyword options that rebuild this rendering as `rendering_for(self.name, **options)`."""
        return {}


class CompletionRendering(Rendering):
    """Plain text, no template: the segments one after another (`tokenize_segments`), as a base model reads.

    Plain text has no turns, so context messages are not rendered.
    """

    name = "completion"

    def render(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt: Sequence[Segment],
        completion: Sequence[Segment],
        context: Context = (),
    ) -> TokenizedSample:
        return tokenize_segments(tokenizer, [*prompt, *completion])

    def render_prompt(
        self, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Segment], context: Context = ()
    ) -> list[int]:
        return tokenize_segments(tokenizer, prompt, add_eos=False).input_ids


class ChatRendering(Rendering):
    """Any format through the tokenizer's chat template: the user asks, the assistant thinks and answers.

    The user turn holds the prompt text before the format's first reasoning
    token; that markup (`<think>`, a `none` prompt's empty block, pause fillers,
    latent thoughts) opens the assistant turn instead, where a reasoning model
    writes it, and stays given (its roles are kept: never trained on). The
    prompt is `apply_chat_template(..., add_generation_prompt=True)` over the
    context messages (a data row's system prompt and earlier turns) and the
    user's, so role headers, the user turn and any system prompt (given here,
    in the row, or the default one a template injects, as SmolLM2's does) are
    all PROMPT tokens. The
    completion follows as the assistant content, closed by the template's
    end-of-turn token(s), which carry the last segment's role: the loss covers
    them, so a trained model stops where the template ends a turn.

    Each segment is tokenized on its own, as `tokenize_segments` does, so roles
    are exact for any sub-word tokenizer; the sequence decodes to the
    template's own text of the conversation.
    """

    name = "chat"
    # Stands for the assistant content when the template renders a whole conversation, to find what follows it.
    _CONTENT = "\x00content\x00"

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt

    def check(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"chat rendering needs a tokenizer with a chat template, and this "
                             f"{type(tokenizer).__name__} has none: use rendering='completion' or set "
                             "tokenizer.chat_template")

    def render(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt: Sequence[Segment],
        completion: Sequence[Segment],
        context: Context = (),
    ) -> TokenizedSample:
        if not completion:
            raise ValueError("chat rendering needs at least one completion segment (the assistant content)")
        prompt_ids = self.render_prompt(tokenizer, prompt, context)
        reply = _tokenize_parts(tokenizer, completion)
        end = self.end_ids(tokenizer)
        roles = [int(Role.PROMPT)] * len(prompt_ids) + reply.roles + [int(completion[-1].role)] * len(end)
        return TokenizedSample(prompt_ids + reply.input_ids + end, roles)

    def render_prompt(
        self, tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Segment], context: Context = ()
    ) -> list[int]:
        self.check(tokenizer)
        user, prefill = split_user_text(prompt)
        messages = self._messages(user, context)
        header = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template's text holds its own special tokens (BOS included where it has one): none are added twice.
        ids = tokenizer(header, add_special_tokens=False)["input_ids"]
        return ids + _tokenize_parts(tokenizer, prefill).input_ids

    def end_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The template's end of an assistant turn, trailing whitespace dropped (`<|im_end|>`, `<|eot_id|>`).

        Read off the template itself: what it writes after the assistant's
        content in a one-exchange conversation. The whitespace after it opens the
        next turn, which a generation never reaches.
        """
        self.check(tokenizer)
        text = tokenizer.apply_chat_template(
            [*self._messages("?"), {"role": "assistant", "content": self._CONTENT}], tokenize=False
        )
        if self._CONTENT not in text:
            raise ValueError("the tokenizer's chat template does not write the assistant's content verbatim; "
                             "chat rendering cannot place a completion in it")
        end = text.rsplit(self._CONTENT, 1)[1].rstrip()
        if not end:
            raise ValueError("the tokenizer's chat template writes nothing after the assistant's content: "
                             "a model could not learn where its turn ends")
        return tokenizer(end, add_special_tokens=False)["input_ids"]

    def options(self) -> dict[str, Any]:
        return {"system_prompt": self.system_prompt}

    def _messages(self, user: str, context: Context = ()) -> list[dict[str, str]]:
        if self.system_prompt is not None and any(message["role"] == "system" for message in context):
            raise ValueError("the example's context messages hold a system prompt, and so does this ChatRendering: "
                             "give it once")
        system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return [*system, *(dict(message) for message in context), {"role": "user", "content": user}]


def split_user_text(prompt: Sequence[Segment]) -> tuple[str, list[Segment]]:
    """The user's text (the prompt before its first reasoning token) and the segments from that token on.

    Every built-in format writes its prompt as the example's text followed by
    reasoning markup, so this needs no help from the format; text before the
    markup must be PROMPT-role, since the user turn is never trained on.
    """
    user: list[str] = []
    for index, segment in enumerate(prompt):
        starts = [at for at in (segment.text.find(token) for token in REASONING_TOKENS) if at >= 0]
        cut = min(starts, default=len(segment.text))
        if cut > 0 and segment.role != Role.PROMPT:
            raise ValueError(f"a {segment.role.name} segment before the reasoning markup cannot go in the user turn")
        user.append(segment.text[:cut])
        if starts:
            return "".join(user), [Segment(segment.role, segment.text[cut:]), *prompt[index + 1 :]]
    return "".join(user), []


def _tokenize_parts(tokenizer: PreTrainedTokenizerBase, segments: Sequence[Segment]) -> TokenizedSample:
    """Segments inside a turn: no special tokens of the tokenizer's own, no EOS (the template closes the turn)."""
    ids: list[int] = []
    roles: list[int] = []
    for segment in segments:
        piece = tokenizer(segment.text, add_special_tokens=False)["input_ids"]
        ids += piece
        roles += [int(segment.role)] * len(piece)
    return TokenizedSample(ids, roles)


RENDERINGS: dict[str, type[Rendering]] = {rendering.name: rendering for rendering in (CompletionRendering, ChatRendering)}


def rendering_for(rendering: str | Rendering | None, **options: Any) -> Rendering:
    """The rendering named `rendering` (`completion`, `chat`) built with `options`; an object is returned as it is
    and takes no options (they would be silently ignored)."""
    if isinstance(rendering, Rendering):
        if options:
            raise ValueError(f"options {sorted(options)} configure a rendering named by string; "
                             f"this one is already built ({type(rendering).__name__})")
        return rendering
    if rendering is None:
        return CompletionRendering()
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r}; expected one of {list(RENDERINGS)} or a Rendering")
    return RENDERINGS[rendering](**options)
