"""JSONL reading and writing in TRL's column conventions (framework/data/formats.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.data.formats import (
    DataFormatError,
    PreferencePair,
    read_examples,
    read_preferences,
    write_examples,
    write_preferences,
)
from framework.data.sample import Example

SYSTEM = {"role": "system", "content": "Answer with a number."}
USER = {"role": "user", "content": "What is 2+3?"}
ASSISTANT = {"role": "assistant", "content": "5"}

# Unicode beyond the BMP, a combining accent, and U+2028 / U+0085, which
# str.splitlines would wrongly treat as line breaks inside a JSON string.
EXAMPLES = [
    Example(
        prompt="Combien font 2 + 3 ? 🧮\u2028(réponds vite)",
        trace="Je pose l'addition.\n2 + 3 = 5\u0085c'est tout.",
        answer="5 — évidemment",
        steps=("2 + 3 = 5",),
        metadata={"id": 7, "source": "synthétique", "truth": {"answer": 5, "steps": [[2, 3, 5]]}, "ok": None},
    ),
    Example(prompt="  leading spaces are part of the prompt", trace="", answer="no reasoning"),
    Example(
        prompt="And now?",
        trace="multi\n\n  line\ttrace",
        answer="",
        metadata={"context_messages": [SYSTEM, USER, {"role": "assistant", "content": "5"}], "tags": ["a", "b"]},
    ),
]


def write_rows(path: Path, *rows: dict | list | str) -> None:
    """Write one line per row: JSON for objects and lists, raw text for strings."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_rows(path: Path) -> list[dict]:
    # split on "\n" only, as a JSONL reader must: splitlines would break at U+2028 inside strings
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("style", ["prompt_completion", "messages"])
def test_examples_round_trip(tmp_path, style):
    path = tmp_path / "examples.jsonl"
    write_examples(EXAMPLES, path, style=style)
    assert read_examples(path) == EXAMPLES


def test_prompt_completion_layout_on_disk(tmp_path):
    path = tmp_path / "examples.jsonl"
    write_examples([Example("What is 2+3?", "2 plus 3 is 5.", "5", ("2+3=5",), {"id": 7})], path)
    assert path.read_text(encoding="utf-8") == (
        '{"prompt": "What is 2+3?", "completion": "<think>\\n2 plus 3 is 5.\\n</think>\\n\\n5", '
        '"steps": ["2+3=5"], "id": 7}\n'
    )


def test_messages_layout_on_disk_puts_context_back_into_the_conversation(tmp_path):
    path = tmp_path / "examples.jsonl"
    write_examples([EXAMPLES[2]], path, style="messages")
    (row,) = read_rows(path)
    assert row == {
        "messages": [
            SYSTEM,
            USER,
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "And now?"},
            {"role": "assistant", "content": "", "reasoning_content": "multi\n\n  line\ttrace"},
        ],
        "tags": ["a", "b"],
    }


def test_written_file_is_utf8_not_escaped(tmp_path):
    path = tmp_path / "examples.jsonl"
    write_examples(EXAMPLES[:1], path)
    assert "🧮" in path.read_text(encoding="utf-8")


def test_empty_trace_is_written_as_an_empty_think_block(tmp_path):
    # Qwen3's non-thinking layout; also keeps an answer that starts with a tag from being parsed.
    path = tmp_path / "examples.jsonl"
    example = Example("p", "", "<think>is part of the answer</think>")
    write_examples([example], path)
    assert read_rows(path)[0]["completion"] == "<think>\n\n</think>\n\n<think>is part of the answer</think>"
    assert read_examples(path) == [example]


def test_preferences_round_trip(tmp_path):
    path = tmp_path / "pairs.jsonl"
    metadata = {"score": {"chosen": 0.9, "rejected": 0.1}, "context_messages": [SYSTEM]}
    pairs = [
        PreferencePair(
            Example("Σ 1..3 ?", "1+2+3\n= 6", "6 ✓", metadata=metadata),
            Example("Σ 1..3 ?", "1+2+3 = 7", "7", metadata=metadata),
        ),
        PreferencePair(Example("q", "", "yes"), Example("q", "", "no")),
    ]
    write_preferences(pairs, path)
    assert read_rows(path)[1] == {
        "prompt": "q",
        "chosen": "<think>\n\n</think>\n\nyes",
        "rejected": "<think>\n\n</think>\n\nno",
    }
    assert read_preferences(path) == pairs


def test_writing_an_empty_list_makes_an_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    write_examples([], path)
    assert path.read_text() == "" and read_examples(path) == []


# ----------------------------------------------------------------------------- reading TRL-style rows


def test_reads_standard_prompt_completion_with_inline_think(tmp_path):
    path = tmp_path / "data.jsonl"
    write_rows(
        path,
        {"prompt": "2+3?", "completion": "<think>2 plus 3</think>5"},
        {"prompt": "2+3?", "completion": "  <think>\n  2 plus 3 \n</think>\n\n 5 \n"},
        {"prompt": "The sky is", "completion": " blue."},
    )
    assert [(e.prompt, e.trace, e.answer) for e in read_examples(path)] == [
        ("2+3?", "2 plus 3", "5"),
        ("2+3?", "2 plus 3", "5"),  # trace and answer are stripped
        ("The sky is", "", "blue."),  # no think block: all answer
    ]


@pytest.mark.parametrize(
    "assistant",
    [
        {"role": "assistant", "content": "5", "reasoning_content": " 2 plus 3 \n"},
        {"role": "assistant", "content": "5", "thinking": "2 plus 3"},
        {"role": "assistant", "content": "<think>\n2 plus 3\n</think>\n\n5"},
        {"role": "assistant", "content": "<think>2 plus 3</think>5", "reasoning_content": None},
        {"role": "assistant", "content": "5", "reasoning_content": "2 plus 3", "thinking": "2 plus 3"},
    ],
    ids=["reasoning_content", "thinking", "inline", "null-reasoning-falls-back-to-inline", "both-agree"],
)
def test_reads_messages_reasoning_in_every_place(tmp_path, assistant):
    path = tmp_path / "data.jsonl"
    write_rows(path, {"messages": [USER, assistant]})
    assert read_examples(path) == [Example("What is 2+3?", "2 plus 3", "5")]


def test_reasoning_field_makes_the_content_verbatim(tmp_path):
    # As in Qwen3's template: with a reasoning field, tags in the content are the answer's own text.
    path = tmp_path / "data.jsonl"
    write_rows(path, {"messages": [USER, {"role": "assistant", "content": "a </think> b", "reasoning_content": "r"}]})
    assert read_examples(path)[0].answer == "a </think> b"


def test_reads_messages_with_context(tmp_path):
    path = tmp_path / "data.jsonl"
    earlier = [SYSTEM, USER, {"role": "assistant", "content": "5"}]
    follow_up = {"role": "user", "content": "Times 2?"}
    write_rows(path, {"messages": [*earlier, follow_up, {"role": "assistant", "content": "<think>5*2</think>10"}]})
    (example,) = read_examples(path)
    assert (example.prompt, example.trace, example.answer) == ("Times 2?", "5*2", "10")
    assert example.metadata == {"context_messages": earlier}


def test_reads_conversational_prompt_completion(tmp_path):
    path = tmp_path / "data.jsonl"
    write_rows(path, {"prompt": [SYSTEM, USER], "completion": [{**ASSISTANT, "reasoning_content": "2+3"}]})
    assert read_examples(path) == [Example("What is 2+3?", "2+3", "5", metadata={"context_messages": [SYSTEM]})]


def test_reads_conversational_preferences(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_rows(
        path,
        {
            "prompt": [SYSTEM, USER],
            "chosen": [{"role": "assistant", "content": "<think>2+3</think>5"}],
            "rejected": [{"role": "assistant", "content": "6", "thinking": "2*3"}],
            "margin": 1.5,
        },
    )
    (pair,) = read_preferences(path)
    assert pair.prompt == "What is 2+3?"
    assert (pair.chosen.trace, pair.chosen.answer) == ("2+3", "5")
    assert (pair.rejected.trace, pair.rejected.answer) == ("2*3", "6")
    assert pair.metadata == {"margin": 1.5, "context_messages": [SYSTEM]}
    assert pair.rejected.metadata == pair.chosen.metadata


def test_unknown_columns_are_kept_and_written_back(tmp_path):
    path, copy = tmp_path / "data.jsonl", tmp_path / "copy.jsonl"
    extra = {"id": "gsm8k-17", "label": True, "truth": {"answer": 5, "per_step": [1, None, {"x": [2.5]}]}}
    write_rows(path, {"prompt": "p", "completion": "<think>t</think>a", **extra})
    (example,) = read_examples(path)
    assert example.metadata == extra
    write_examples([example], copy)
    assert {k: v for k, v in read_rows(copy)[0].items() if k in extra} == extra


def test_blank_lines_and_a_byte_order_mark_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    row = json.dumps({"prompt": "p", "completion": "a"})
    path.write_bytes(b"\xef\xbb\xbf" + f"{row}\n\n   \n{row}\r\n".encode())
    assert read_examples(path) == [Example("p", "", "a")] * 2


def test_a_messages_row_reads_back_through_the_other_style(tmp_path):
    # messages -> prompt_completion keeps the context as a column; back to messages restores it.
    path = tmp_path / "data.jsonl"
    write_rows(path, {"messages": [SYSTEM, USER, {"role": "assistant", "content": "<think>t</think>5"}]})
    original = read_examples(path)
    write_examples(original, path, style="prompt_completion")
    assert read_rows(path)[0]["context_messages"] == [SYSTEM]
    write_examples(read_examples(path), path, style="messages")
    assert read_examples(path) == original
    assert read_rows(path)[0]["messages"][:2] == [SYSTEM, USER]


# ----------------------------------------------------------------------------- errors

MESSAGE_ROW = {"messages": [USER, ASSISTANT]}

EXAMPLE_ERRORS = [
    pytest.param('{"prompt": "p",', None, "invalid JSON: Expecting property name", id="invalid-json"),
    pytest.param([1, 2], None, "expected a JSON object, got array", id="not-an-object"),
    pytest.param({"text": "The sky is blue."}, None, "'prompt' and 'completion', or 'messages'", id="no-known-columns"),
    pytest.param({"prompt": "p"}, "completion", "missing column", id="missing-completion"),
    pytest.param({"prompt": "p", "completion": 3}, "completion", "got number", id="completion-is-int"),
    pytest.param({"prompt": None, "completion": "a"}, "prompt", "got null", id="prompt-is-null"),
    pytest.param({"prompt": "p", "completion": "<think>still"}, "completion", "unclosed <think>", id="unclosed-think"),
    pytest.param({"prompt": "p", "completion": "r</think>a"}, "completion", "without a <think>", id="orphan-close"),
    pytest.param({"prompt": "p", "completion": "a", "steps": "s"}, "steps", "list of strings", id="steps-not-list"),
    pytest.param({**MESSAGE_ROW, "prompt": "p"}, "messages", "not both", id="messages-and-prompt"),
    pytest.param({"messages": "hi"}, "messages", "expected a list of messages", id="messages-not-list"),
    pytest.param({"messages": [USER]}, "messages", "got 1", id="single-message"),
    pytest.param({"messages": ["hi", ASSISTANT]}, "messages[0]", "message object", id="message-not-object"),
    pytest.param({"messages": [{"content": "hi"}, ASSISTANT]}, "messages[0].role", "missing", id="no-role"),
    pytest.param({"messages": [USER, {"role": "assistant"}]}, "messages[1].content", "missing", id="no-content"),
    pytest.param(
        {"messages": [USER, {"role": "assistant", "content": None}]},
        "messages[1].content",
        "got null",
        id="null-content",
    ),
    pytest.param({"messages": [USER, USER]}, "messages[1].role", "assistant message, got 'user'", id="last-is-user"),
    pytest.param({"messages": [SYSTEM, ASSISTANT]}, "messages[0].role", "end with a user message", id="no-user-prompt"),
    pytest.param(
        {"messages": [USER, {**ASSISTANT, "reasoning_content": ["r"]}]},
        "messages[1].reasoning_content",
        "got array",
        id="reasoning-not-text",
    ),
    pytest.param(
        {"messages": [USER, {**ASSISTANT, "reasoning_content": "r", "thinking": "s"}]},
        "messages[1].thinking",
        "differs",
        id="reasoning-disagrees",
    ),
    pytest.param(
        {"messages": [USER, {"role": "assistant", "content": "<think>r"}]},
        "messages[1].content",
        "unclosed",
        id="unclosed-think-in-message",
    ),
    pytest.param(
        {"prompt": [USER], "completion": [ASSISTANT, ASSISTANT]}, "completion", "got 2 messages", id="two-replies"
    ),
    pytest.param({"prompt": [], "completion": "a"}, "prompt", "empty list", id="empty-prompt-list"),
    pytest.param(
        {"prompt": [SYSTEM, USER], "completion": "a", "context_messages": []},
        "context_messages",
        "both as a column",
        id="context-given-twice",
    ),
    pytest.param({"prompt": "p", "chosen": "a", "rejected": "b"}, "completion", "read_preferences", id="a-preference"),
]

PREFERENCE_ERRORS = [
    pytest.param(
        {"prompt": "p", "chosen": "<think>t</think>a", "rejected": "<think>\nt\n</think>\n\na"},
        "rejected",
        "same completion",
        id="chosen-equals-rejected",
    ),
    pytest.param({"prompt": "p", "chosen": "a"}, "rejected", "missing column", id="missing-rejected"),
    pytest.param({"chosen": "a", "rejected": "b"}, "prompt", "'prompt', 'chosen' and 'rejected'", id="implicit-prompt"),
    pytest.param({"prompt": "p", "chosen": "a", "rejected": "<think>"}, "rejected", "unclosed", id="unclosed-think"),
    pytest.param(
        {"prompt": [USER], "chosen": [USER], "rejected": [ASSISTANT]},
        "chosen[0].role",
        "assistant message",
        id="chosen-from-user",
    ),
    pytest.param({"prompt": "p", "chosen": 1, "rejected": "b"}, "chosen", "got number", id="chosen-is-int"),
]


def assert_located(error: DataFormatError, path: Path, line: int, field: str | None, problem: str) -> None:
    assert (error.path, error.line, error.field) == (path, line, field)
    location = f"{path}:{line}: " + ("" if field is None else f"field '{field}': ")
    assert str(error).startswith(location), str(error)
    assert problem in str(error), str(error)


@pytest.mark.parametrize("row, field, problem", EXAMPLE_ERRORS)
def test_bad_example_rows_name_path_line_and_field(tmp_path, row, field, problem):
    path = tmp_path / "data.jsonl"
    # A good row and a blank line first: the reported line counts blank lines and is 1-based.
    write_rows(path, {"prompt": "p", "completion": "a"}, "", row)
    with pytest.raises(DataFormatError) as info:
        read_examples(path)
    assert_located(info.value, path, 3, field, problem)


@pytest.mark.parametrize("row, field, problem", PREFERENCE_ERRORS)
def test_bad_preference_rows_name_path_line_and_field(tmp_path, row, field, problem):
    path = tmp_path / "pairs.jsonl"
    write_rows(path, {"prompt": "p", "chosen": "a", "rejected": "b"}, "", row)
    with pytest.raises(DataFormatError) as info:
        read_preferences(path)
    assert_located(info.value, path, 3, field, problem)


def test_invalid_utf8_is_located(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "p", "completion": "a"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataFormatError) as info:
        read_examples(path)
    assert_located(info.value, path, 2, None, "not valid UTF-8")


def test_data_format_error_is_a_value_error(tmp_path):
    path = tmp_path / "data.jsonl"
    write_rows(path, "nope")
    with pytest.raises(ValueError):
        read_examples(path)


@pytest.mark.parametrize("reader", [read_examples, read_preferences])
def test_missing_file_names_the_path(tmp_path, reader):
    path = tmp_path / "nowhere" / "data.jsonl"
    with pytest.raises(FileNotFoundError, match="data file not found: .*nowhere/data.jsonl"):
        reader(path)


# ----------------------------------------------------------------------------- writing errors and atomicity


def test_failed_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "examples.jsonl"
    write_examples(EXAMPLES, path)
    before = path.read_bytes()
    unserializable = Example("p", "t", "a", metadata={"nested": {"fine": 1, "broken": object()}})
    with pytest.raises(ValueError, match="cannot write line 2: .*not JSON serializable"):
        write_examples([EXAMPLES[0], unserializable, EXAMPLES[1]], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["examples.jsonl"]  # no temporary file left behind


def test_failure_while_writing_the_file_leaves_the_old_file_intact(tmp_path):
    # A lone surrogate serializes to JSON text but cannot be encoded as UTF-8, so this
    # fails inside the file write itself, after a plain open(path, "w") would have truncated.
    path = tmp_path / "examples.jsonl"
    write_examples(EXAMPLES, path)
    before = path.read_bytes()
    with pytest.raises(UnicodeEncodeError):
        write_examples([*EXAMPLES, Example("p", "t", "\ud800")], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["examples.jsonl"]


def test_failed_preference_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pair = PreferencePair(Example("q", "", "yes"), Example("q", "", "no"))
    write_preferences([pair], path)
    before = path.read_bytes()
    a_set = {"s": {1, 2}}  # sets are not JSON
    broken = PreferencePair(Example("q", "", "a", metadata=a_set), Example("q", "", "b", metadata=a_set))
    with pytest.raises(ValueError, match="cannot write line 2"):
        write_preferences([pair, broken], path)
    assert path.read_bytes() == before


def test_a_trace_that_closes_the_think_block_needs_the_messages_style(tmp_path):
    path = tmp_path / "examples.jsonl"
    example = Example("p", "I write </think> in my trace", "a")
    with pytest.raises(ValueError, match="style='messages'"):
        write_examples([example], path)
    assert not path.exists()
    write_examples([example], path, style="messages")
    assert read_examples(path) == [example]


@pytest.mark.parametrize("key", ["prompt", "completion", "messages", "steps"])
def test_metadata_that_would_read_back_as_a_column_is_refused(tmp_path, key):
    with pytest.raises(ValueError, match=f"metadata key '{key}'"):
        write_examples([Example("p", "t", "a", metadata={key: "x"})], tmp_path / "examples.jsonl")


def test_invalid_context_messages_are_refused_in_messages_style(tmp_path):
    example = Example("p", "t", "a", metadata={"context_messages": [{"role": "system"}]})
    with pytest.raises(ValueError, match=r"context_messages\[0\].content"):
        write_examples([example], tmp_path / "examples.jsonl", style="messages")


def test_unknown_style_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown style 'chatml'"):
        write_examples(EXAMPLES, tmp_path / "examples.jsonl", style="chatml")  # type: ignore[arg-type]


def test_preference_pair_invariants():
    chosen = Example("q", "t", "yes", metadata={"id": 1})
    assert PreferencePair(chosen, Example("q", "t", "no", metadata={"id": 1})).prompt == "q"
    with pytest.raises(ValueError, match="share the prompt"):
        PreferencePair(chosen, Example("other", "t", "no", metadata={"id": 1}))
    with pytest.raises(ValueError, match="share the metadata"):
        PreferencePair(chosen, Example("q", "t", "no", metadata={"id": 2}))
    with pytest.raises(ValueError, match="same completion"):
        PreferencePair(chosen, Example("q", "t", "yes", metadata={"id": 1}))


# ----------------------------------------------------------------------------- property: random text round-trips

# Text rich in the characters that break naive parsers: think tags, newlines,
# U+2028, quotes, backslashes and non-ASCII.
_PIECES = st.sampled_from(["<think>", "</think>", "\n", " ", "\u2028", "\u0085", '"', "\\", "é", "🙂"])
TEXT = st.lists(st.one_of(st.text(max_size=12), _PIECES), max_size=6).map("".join)
STRIPPED = TEXT.map(str.strip)  # trace and answer are stored stripped (module docstring)
INLINE_TRACE = STRIPPED.filter(lambda text: "</think>" not in text)  # refused inline, tested above

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
RESERVED = {"prompt", "completion", "messages", "steps", "chosen", "rejected", "context_messages"}
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}))


@st.composite
def metadata(draw) -> dict:
    columns = draw(st.dictionaries(TEXT.filter(lambda key: key not in RESERVED), JSON_VALUES, max_size=4))
    context = draw(MESSAGES)
    return {**columns, "context_messages": context} if context else columns


@st.composite
def examples(draw, trace=STRIPPED) -> Example:
    steps = tuple(draw(st.lists(TEXT, max_size=3)))
    return Example(draw(TEXT), draw(trace), draw(STRIPPED), steps, draw(metadata()))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_examples_round_trip(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("property") / "examples.jsonl"
    style = data.draw(st.sampled_from(["prompt_completion", "messages"]))
    batch = data.draw(st.lists(examples(trace=INLINE_TRACE if style == "prompt_completion" else STRIPPED), max_size=4))
    write_examples(batch, path, style=style)
    assert read_examples(path) == batch


@settings(max_examples=40, deadline=None)
@given(prompt=TEXT, shared=metadata(), sides=st.tuples(INLINE_TRACE, STRIPPED, INLINE_TRACE, STRIPPED))
def test_random_preferences_round_trip(tmp_path_factory, prompt, shared, sides):
    chosen, rejected = Example(prompt, *sides[:2], metadata=shared), Example(prompt, *sides[2:], metadata=shared)
    if sides[:2] == sides[2:]:
        return  # identical sides are refused by PreferencePair, tested above
    path = tmp_path_factory.mktemp("property") / "pairs.jsonl"
    write_preferences([PreferencePair(chosen, rejected)], path)
    assert read_preferences(path) == [PreferencePair(chosen, rejected)]
