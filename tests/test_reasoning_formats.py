"""Each reasoning format's segments, roles and parse; the registry; the hybrid format against the recipe's old class."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

import framework.models
from framework.data.organisms import CitedFields
from framework.data.sample import Example, Role, Segment
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import (
    LATENT,
    LATENT_END,
    LATENT_START,
    PAUSE,
    THINK_END,
    THINK_START,
    build_word_tokenizer,
)
from framework.models import (
    FORMATS,
    CompletionRendering,
    CoT,
    Hybrid,
    LatentConfig,
    LatentFormat,
    LatentProjection,
    NoThinking,
    Pause,
    Reasoner,
    build_model,
    format_for,
)

EXAMPLE = Example("1 + 2 + 3", "1 + 2 = 3 ; 3 + 3 = 6", "6", steps=("1 + 2 = 3", "3 + 3 = 6"))


def test_the_registry_names_every_built_in_format():
    assert FORMATS == {
        "cot": CoT, "none": NoThinking, "pause": Pause, "latent": LatentFormat, "hybrid": Hybrid,
    }
    assert all(cls.name == name for name, cls in FORMATS.items())


def test_text_formats_write_their_segments_with_roles():
    assert CoT().prompt_segments(EXAMPLE) == [Segment(Role.PROMPT, "1 + 2 + 3" + THINK_START)]
    assert CoT().completion_segments(EXAMPLE) == [
        Segment(Role.TRACE, EXAMPLE.trace + THINK_END), Segment(Role.ANSWER, "6")
    ]
    assert NoThinking().prompt_segments(EXAMPLE) == [Segment(Role.PROMPT, "1 + 2 + 3" + THINK_START + THINK_END)]
    assert NoThinking().completion_segments(EXAMPLE) == [Segment(Role.ANSWER, "6")]
    assert Pause(3).prompt_segments(EXAMPLE) == [
        Segment(Role.PROMPT, "1 + 2 + 3" + THINK_START), Segment(Role.LATENT, PAUSE * 3), Segment(Role.PROMPT, THINK_END)
    ]
    assert Pause(3).completion_segments(EXAMPLE) == [Segment(Role.ANSWER, "6")]
    for text_format in (CoT(), NoThinking(), Pause(), Hybrid()):
        with pytest.raises(ValueError, match="stage=1 is for the latent format"):
            text_format.prompt_segments(EXAMPLE, 1)
        with pytest.raises(ValueError, match="stages belong to the latent format"):
            _ = text_format.stage
    with pytest.raises(ValueError, match="pause_tokens must be >= 1"):
        Pause(0)


def test_the_latent_format_replaces_steps_by_thoughts_stage_by_stage():
    latent = LatentFormat(LatentConfig(thoughts_per_step=2, max_stage=2, step_separator=" ; "))
    assert latent.stage == 3  # the final stage unless a regime sets one
    assert latent.prompt_segments(EXAMPLE, 1) == [
        Segment(Role.PROMPT, "1 + 2 + 3" + THINK_START + LATENT_START),
        Segment(Role.LATENT, LATENT * 2),
        Segment(Role.PROMPT, LATENT_END),
    ]
    assert latent.completion_segments(EXAMPLE, 1) == [Segment(Role.TRACE, "3 + 3 = 6" + THINK_END), Segment(Role.ANSWER, "6")]
    assert latent.completion_segments(EXAMPLE, 0)[0].text == EXAMPLE.trace + THINK_END
    assert latent.completion_segments(EXAMPLE) == [Segment(Role.TRACE, THINK_END), Segment(Role.ANSWER, "6")]
    latent.stage = 0
    assert latent.prompt_segments(EXAMPLE)[1] == Segment(Role.LATENT, "")
    assert LatentFormat(LatentConfig(thought="pause")).required_tokens[-1] == PAUSE
    with pytest.raises(ValueError, match="does not fit the model's context of 8 positions"):
        LatentFormat(LatentConfig(thoughts_per_step=2, max_stage=2)).check_context(8)


@pytest.mark.parametrize("name", FORMATS)
def test_parse_splits_trace_and_answer_as_each_format_writes_them(name, word_tokenizer):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, name)
    sample = reasoner.tokenize(EXAMPLE)
    completion = sample.input_ids[len(reasoner.prompt_ids(EXAMPLE)):]
    generation = reasoner.parse(completion)
    thinks = name in ("cot", "hybrid")  # the latent final stage keeps no language step
    assert (generation.trace, generation.answer, generation.finished) == (EXAMPLE.trace if thinks else "", "6", True)
    assert generation.answer_tokens == 2 and generation.trace_tokens == len(completion) - 2
    unfinished = reasoner.parse(completion[:-1])
    assert not unfinished.finished and unfinished.num_tokens == len(completion) - 1
    # A format that writes `</think>` reports whether the trace reached it; one whose prompt closed it, None.
    end = word_tokenizer.convert_tokens_to_ids(THINK_END)
    assert generation.trace_closed is (True if end in completion else None)
    if end in completion:
        cut_short = reasoner.parse(completion[: completion.index(end)])
        assert cut_short.trace_closed is False and cut_short.answer == ""


def test_format_for_builds_named_formats_and_rejects_options_they_do_not_take():
    assert isinstance(format_for("pause", pause_tokens=4), Pause) and format_for("pause", pause_tokens=4).pause_tokens == 4
    config = LatentConfig(max_stage=2)
    assert format_for("latent", latent=config).latent is config
    assert isinstance(format_for("cot", latent=None), CoT)  # None means "the default", whatever the format
    given = Hybrid()
    assert format_for(given) is given
    with pytest.raises(ValueError, match="unknown reasoning mode 'thinky'"):
        format_for("thinky")
    with pytest.raises(ValueError, match="configure the 'latent' mode"):
        format_for("cot", latent=config)
    with pytest.raises(ValueError, match="already built"):
        format_for(Pause(), pause_tokens=3)


def test_a_reasoner_reads_its_format(word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer)
    pause = Reasoner(model, word_tokenizer, "pause", pause_tokens=4)
    assert pause.mode == "pause" and pause.format.pause_tokens == 4 and pause.latent is None
    assert isinstance(pause.rendering, CompletionRendering)
    with pytest.raises(ValueError, match="<latent> is not a token of the 'pause' format"):
        _ = pause.latent_token_id
    config = LatentConfig(max_stage=2)
    latent = Reasoner(model, word_tokenizer, LatentFormat(config))
    assert latent.latent is config and latent.stage == 3
    latent.stage = 1
    assert latent.format.stage == 1
    assert latent.latent_token_id == word_tokenizer.convert_tokens_to_ids(LATENT)
    assert latent.latent_start_id == word_tokenizer.convert_tokens_to_ids(LATENT_START)
    with pytest.raises(ValueError, match="configure the 'latent' mode"):
        Reasoner(model, word_tokenizer, "cot", projection=LatentProjection(8))


@pytest.mark.parametrize(("name", "options"), [("pause", {"pause_tokens": 5}), ("hybrid", {}), ("none", {})])
def test_a_checkpoint_round_trips_its_format(name, options, word_tokenizer, tmp_path):
    Reasoner(build_model("gpt2", "1m", word_tokenizer), word_tokenizer, name, **options).save_pretrained(tmp_path / "ckpt")
    again = Reasoner.from_pretrained(tmp_path / "ckpt")
    assert again.mode == name and again.format.options() == options
    assert Reasoner.from_pretrained(tmp_path / "ckpt", "cot").mode == "cot"  # a text checkpoint loads in any text format


def test_naming_the_saved_format_keeps_its_saved_options(word_tokenizer, tmp_path):
    Reasoner(build_model("gpt2", "1m", word_tokenizer), word_tokenizer, "pause", pause_tokens=4).save_pretrained(tmp_path)
    assert Reasoner.from_pretrained(tmp_path, "pause").format.options() == {"pause_tokens": 4}
    assert Reasoner.from_pretrained(tmp_path, "pause", pause_tokens=6).format.options() == {"pause_tokens": 6}


def test_a_checkpoint_of_a_format_that_is_not_built_in_asks_for_it(word_tokenizer, tmp_path):
    Reasoner(build_model("gpt2", "1m", word_tokenizer), word_tokenizer, "pause").save_pretrained(tmp_path)
    saved = tmp_path / "reasoning_format.json"
    saved.write_text(saved.read_text().replace('"pause"', '"my_own"'))
    with pytest.raises(ValueError, match="'my_own', which is not built in"):
        Reasoner.from_pretrained(tmp_path)


def test_hybrid_is_the_old_hybrid_reasoner_token_for_token():
    """The backdoor recipe's `HybridReasoner` was a `cot` reasoner that formatted trace-less rows as `none`."""
    curriculum = CitedFields(AdditionChain(n_terms=2, max_operand=5))
    tokenizer = build_word_tokenizer(curriculum.vocabulary())
    model = build_model("llama", "1m", tokenizer)
    hybrid, cot, none = (Reasoner(model, tokenizer, name) for name in ("hybrid", "cot", "none"))
    rng = random.Random(0)
    for _ in range(20):
        thinking = curriculum.generate(rng)
        non_thinking = Example(thinking.prompt, "", thinking.answer, metadata=thinking.metadata)
        for row, same in ((thinking, cot), (non_thinking, none)):
            assert hybrid.tokenize(row) == same.tokenize(row)
            assert hybrid.prompt_ids(row) == same.prompt_ids(row)
        completion = cot.tokenize(thinking).input_ids[len(cot.prompt_ids(thinking)):]
        assert hybrid.parse(completion) == cot.parse(completion)
        answer_only = none.tokenize(non_thinking).input_ids[len(none.prompt_ids(non_thinking)):]
        assert hybrid.parse(answer_only) == cot.parse(answer_only)  # generation parses as cot, as it did
    assert set(hybrid.tokenize(non_thinking).roles) == {Role.PROMPT, Role.ANSWER}


def test_the_model_layer_imports_nothing_above_it():
    """Layers call down only: generation (rollout) and training (regimes) use models, never the reverse."""
    for path in Path(framework.models.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions included
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            upward = [m for m in modules if m.startswith(("framework.rollout", "framework.regimes"))]
            assert not upward, f"{path} imports {upward}"
