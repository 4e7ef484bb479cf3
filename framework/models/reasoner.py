"""A causal LM plus its tokenizer, a reasoning format and a rendering.

The format (`framework.models.formats`: `cot`, `none`, `pause`, `latent`,
`hybrid`, or any `ReasoningFormat` of your own) decides what text an
`Example` becomes and how a completion parses; the rendering
(`framework.models.rendering`) decides how that text becomes token ids. The
`Reasoner` holds both beside the model and never asks which format it has:
what differs between formats is in the format. Generation lives one layer up,
in `framework.rollout.generate`, since it runs rollouts.

A latent reasoner formats at a curriculum stage: `tokenize(example, stage=s)`
for training, and `self.stage` (the final stage unless a regime sets it) for
`prompt_ids` and generation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.sample import Example, Segment
from framework.data.tokenize import TokenizedSample
from framework.data.tokenizer import LATENT, LATENT_START, missing_tokens
from framework.io import atomic_directory
from framework.models.formats import FORMATS, Generation, LatentConfig, ReasoningFormat, format_for
from framework.models.latent import LatentProjection
from framework.models.rendering import RENDERINGS, Rendering, rendering_for

FORMAT_FILE = "reasoning_format.json"
LATENT_CONFIG_FILE = "latent_config.json"
PROJECTION_FILE = "latent_projection.safetensors"


class Reasoner:
    """A causal LM, its tokenizer, a reasoning format and the rendering that turns the format's text into ids.

    Args:
        model: any `AutoModelForCausalLM`.
        tokenizer: holds the format's special tokens (`add_reasoning_tokens` adds them).
        format: a `ReasoningFormat`, or the name of a built-in one (`cot`,
            `none`, `pause`, `latent`, `hybrid`) built with the options below.
        pause_tokens: fillers of the `pause` format (default 8).
        latent: thoughts and curriculum of the `latent` format (default `LatentConfig()`).
        projection: the learned thought projection, when `latent.projection`
            is on (default: a fresh identity `LatentProjection`).
        rendering: segments -> ids: a `Rendering`, or the name of a built-in one (`completion`, the default:
            plain text, no chat template; `chat`: the tokenizer's chat template).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        format: str | ReasoningFormat = "cot",
        *,
        pause_tokens: int | None = None,
        latent: LatentConfig | None = None,
        projection: LatentProjection | None = None,
        rendering: str | Rendering | None = None,
    ) -> None:
        self.format = format_for(format, pause_tokens=pause_tokens, latent=latent)
        if self.format.latent is None and projection is not None:
            raise ValueError(f"latent= and projection= configure the 'latent' mode; this reasoner is in {self.mode!r} mode")
        missing = missing_tokens(tokenizer, self.format.required_tokens)
        if missing:
            raise ValueError(
                f"the tokenizer lacks the {self.mode!r} reasoner's special tokens {missing}; add them with "
                "framework.data.tokenizer.add_reasoning_tokens(tokenizer, model) before building the Reasoner"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: a reasoner must know where its answer ends")
        if tokenizer.pad_token_id is None:
            # Common for base checkpoints (GPT-2, Llama); padding is always masked out.
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.rendering = rendering_for(rendering)
        self.rendering.check(tokenizer)
        context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if context is not None:
            self.format.check_context(context)
        self.projection = self._projection(projection)

    def _projection(self, given: LatentProjection | None) -> LatentProjection | None:
        """The thought projection the latent config asks for: `given`, or a fresh identity one."""
        if self.latent is None or not self.latent.projection:
            if given is not None:
                raise ValueError("a projection was given but latent.projection is False")
            return None
        embedding = self.model.get_input_embeddings().weight
        return given or LatentProjection(embedding.shape[1]).to(embedding.device, embedding.dtype)

    @property
    def mode(self) -> str:
        """The format's name (`cot`, `none`, `pause`, `latent`, `hybrid`, or a custom format's)."""
        return self.format.name

    @property
    def latent(self) -> LatentConfig | None:
        """The continuous-thought config when the format has thought slots, else None."""
        return self.format.latent

    @property
    def stage(self) -> int:
        """The latent curriculum stage that `prompt_ids`, generation and `tokenize` use by default."""
        return self.format.stage

    @stage.setter
    def stage(self, value: int) -> None:
        self.format.stage = value

    @property
    def latent_token_id(self) -> int:
        """The id of a `<latent>` slot, whose embedding the thought loop replaces (latent formats)."""
        return self._required_token_id(LATENT)

    @property
    def latent_start_id(self) -> int:
        """The id of `<bot>`, where the thoughts start (latent formats; `collate_latent` aligns on it)."""
        return self._required_token_id(LATENT_START)

    def _required_token_id(self, token: str) -> int:
        if token not in self.format.required_tokens:
            raise ValueError(f"{token} is not a token of the {self.mode!r} format")
        return self.tokenizer.convert_tokens_to_ids(token)

    # -- formatting ---------------------------------------------------------------------------

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """What the model is given at inference time (`stage`: latent format only, default `self.stage`)."""
        return self.format.prompt_segments(example, stage)

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """What the model is trained to write (`stage`: latent format only, default `self.stage`)."""
        return self.format.completion_segments(example, stage)

    def segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        return self.prompt_segments(example, stage) + self.completion_segments(example, stage)

    def tokenize(self, example: Example, stage: int | None = None) -> TokenizedSample:
        """The full training sequence, its closing EOS or end of turn included, with a role per token."""
        return self.rendering.render(
            self.tokenizer, self.prompt_segments(example, stage), self.completion_segments(example, stage),
            _context(example),
        )

    def prompt_ids(self, example: Example, stage: int | None = None) -> list[int]:
        return self.rendering.render_prompt(self.tokenizer, self.prompt_segments(example, stage), _context(example))

    @property
    def stop_token_id(self) -> int:
        """The id generation stops at: the rendering's end of turn when it is one token (`<|im_end|>` under a
        ChatML template), else EOS. Generation stops at EOS as well (`framework.rollout.generate`)."""
        end = self.rendering.end_ids(self.tokenizer)
        return end[0] if len(end) == 1 else self.tokenizer.eos_token_id

    def parse(self, completion_ids: Sequence[int]) -> Generation:
        """Split generated ids into trace and answer, as the format writes them.

        A completion closed by the rendering's end of turn counts as finished,
        as one closed by EOS: the format sees EOS in its place.
        """
        ids, end = list(completion_ids), self.rendering.end_ids(self.tokenizer)
        if len(ids) >= len(end) and ids[len(ids) - len(end) :] == end:
            ids = [*ids[: len(ids) - len(end)], self.tokenizer.eos_token_id]
        return self.format.parse(ids, self.tokenizer)

    # -- persistence --------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Model and tokenizer in Hugging Face format, written atomically.

        Beside them: the format's name and options and the rendering's (`reasoning_format.json`),
        and for a latent reasoner its `LatentConfig` (`latent_config.json`)
        and, when on, its thought projection (`latent_projection.safetensors`);
        the directory still loads as a plain Hugging Face model. A model with
        LoRA adapters (`framework.models.lora`) saves its merged weights there,
        and the adapter alone in `adapter/` (peft's format).
        """
        with atomic_directory(path) as scratch:
            model = self.model
            if getattr(model, "peft_config", None) is not None:  # a peft model; peft itself is an optional extra
                from framework.models.lora import ADAPTER_DIR, merged_copy

                model.save_pretrained(scratch / ADAPTER_DIR)
                model = merged_copy(model)
            model.save_pretrained(scratch)
            self.tokenizer.save_pretrained(scratch)
            described = {"name": self.mode, "options": self.format.options(),
                         "rendering": {"name": self.rendering.name, "options": self.rendering.options()}}
            (scratch / FORMAT_FILE).write_text(json.dumps(described, indent=2))
            if self.latent is not None:
                (scratch / LATENT_CONFIG_FILE).write_text(json.dumps(self.latent.to_dict(), indent=2))
            if self.projection is not None:
                save_file({k: v.detach().contiguous().cpu() for k, v in self.projection.state_dict().items()},
                          scratch / PROJECTION_FILE)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, format: str | ReasoningFormat | None = None, **options: Any
    ) -> Reasoner:
        """Load a saved reasoner: model, tokenizer, format and, for a latent one, its `LatentConfig` and projection.

        `format` defaults to what the directory holds: `latent` when it has a
        `latent_config.json`, else the format its `reasoning_format.json` names
        (with its saved options), else `cot`. A latent checkpoint cannot load
        in another format (its thoughts would be silently dropped); a plain one
        may load as `latent` (Coconut starts from a chain-of-thought model).
        The rendering is the saved one (plain completion for a directory that
        names none). `options` go to `Reasoner` (`pause_tokens`, `latent`,
        `projection`, `rendering`); one given here replaces the saved one.
        """
        from framework.models.factory import load_pretrained

        path = Path(path)
        requested = format.name if isinstance(format, ReasoningFormat) else format
        saved = None
        if (path / LATENT_CONFIG_FILE).is_file():
            if requested not in (None, "latent"):
                raise ValueError(
                    f"{path} is a latent reasoner (it has {LATENT_CONFIG_FILE}); load it with format='latent' "
                    f"(or no format), not format={requested!r}"
                )
            saved = LatentConfig.from_dict(json.loads((path / LATENT_CONFIG_FILE).read_text()))
            if format is None or format == "latent":
                format = "latent"
                options.setdefault("latent", saved)
        elif (path / FORMAT_FILE).is_file():
            described = json.loads((path / FORMAT_FILE).read_text())
            if requested in (None, described["name"]) and not isinstance(format, ReasoningFormat):
                # The saved options (e.g. pause_tokens) hold unless overridden here; a format object carries its own.
                options = {**described["options"], **options}
                if format is None:
                    if described["name"] not in FORMATS:
                        raise ValueError(f"{path} was saved by the format {described['name']!r}, which is not built "
                                         f"in ({sorted(FORMATS)}): pass it, Reasoner.from_pretrained(path, format=...)")
                    format = described["name"]
        if "rendering" not in options and (path / FORMAT_FILE).is_file():
            options["rendering"] = _saved_rendering(path)
        model, tokenizer = load_pretrained(path)
        reasoner = cls(model, tokenizer, format or "cot", **options)
        if saved is not None and saved.projection and reasoner.projection is not None and "projection" not in options:
            if not (path / PROJECTION_FILE).is_file():
                raise FileNotFoundError(
                    f"{path} has no {PROJECTION_FILE}, but its {LATENT_CONFIG_FILE} says projection=true: "
                    "the learned thought projection was not saved with the model"
                )
            reasoner.projection.load_state_dict(load_file(path / PROJECTION_FILE))
            reasoner.projection.to(next(model.parameters()).device)
        return reasoner


def _context(example: Example) -> list[dict[str, str]]:
    """The conversation before the example's user message (a TRL row's system prompt and earlier turns)."""
    return list(example.metadata.get("context_messages", []))


def _saved_rendering(path: Path) -> Rendering:
    """The rendering `reasoning_format.json` names, with its options (plain completion when it names none)."""
    described = json.loads((path / FORMAT_FILE).read_text()).get("rendering", {"name": "completion", "options": {}})
    if described["name"] not in RENDERINGS:
        raise ValueError(f"{path} was saved with the rendering {described['name']!r}, which is not built in "
                         f"({sorted(RENDERINGS)}): pass it, Reasoner.from_pretrained(path, rendering=...)")
    return rendering_for(described["name"], **described["options"])
