"""JSONL files in TRL's column conventions, read into `Example`s and written back.

Rows are detected one by one, so a file may mix shapes:

- prompt-completion: `{"prompt": str, "completion": str}`, the completion
  carrying its reasoning inline as `<think>trace</think>answer`. TRL's
  conversational form (prompt and completion as lists of messages) is read too.
- messages: `{"messages": [..., user, assistant]}`, the assistant's reasoning in
  `reasoning_content` or `thinking` (both names are common), or inline in
  `content`. If a reasoning field is set, `content` is the answer verbatim, as
  in Qwen3's chat template.
- preference: `{"prompt", "chosen", "rejected"}`, read by `read_preferences`;
  chosen and rejected are completions in either of the forms above.

Conventions, chosen so that prompt, trace, answer and (JSON) metadata round-trip
exactly, given a trace and an answer without surrounding whitespace:

- An inline think block opens the text (leading whitespace allowed) and ends at
  the first `</think>`; a `</think>` with no such opening is an error, not part
  of the answer. Trace and answer are stripped of surrounding whitespace on
  read; the prompt is kept verbatim.
- Written completions are `"<think>\\n{trace}\\n</think>\\n\\n{answer}"`, Qwen3's
  layout. An empty trace still gets its (empty) block, so an answer is never
  searched for tags. A trace containing `</think>` cannot be written inline
  (ValueError); the `messages` style holds it in `reasoning_content`.
- Messages before the prompt's user message (system prompt, earlier turns) go
  to `metadata["context_messages"]`. The `messages` style writes them back into
  the conversation; a string prompt cannot hold them, so the `prompt_completion`
  style writes them as a `context_messages` column, read back the same way.
- A `steps` column (list of strings) is `Example.steps`; every other column is
  kept in `metadata` and written back as a column.
- Keys of the prompt and reply messages other than role, content and reasoning
  (`name`, `tool_calls`, ...) are not kept. Preference rows do not hold steps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, TypeVar

from framework.data.sample import Example
from framework.io import atomic_write_text

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_KEYS = ("reasoning_content", "thinking")

# Columns with a meaning of their own; a metadata key with one of these names
# would be read back as something else, so writing one is an error.
_EXAMPLE_COLUMNS = frozenset({"prompt", "completion", "messages", "steps"})
_PREFERENCE_COLUMNS = frozenset({"prompt", "chosen", "rejected"})

T = TypeVar("T")


class DataFormatError(ValueError):
    """A row of a data file that cannot be read, located by file, 1-based line and field."""

    def __init__(self, path: str | os.PathLike, line: int, field: str | None, problem: str) -> None:
        self.path, self.line, self.field = Path(path), line, field
        where = f"{path}:{line}: " if field is None else f"{path}:{line}: field '{field}': "
        super().__init__(where + problem)


@dataclass(frozen=True)
class PreferencePair:
    """Two completions of one prompt, `chosen` preferred over `rejected` (a DPO pair).

    A preference row holds one prompt and one set of columns, so both examples
    share the prompt and the metadata.
    """

    chosen: Example
    rejected: Example

    def __post_init__(self) -> None:
        if self.chosen.prompt != self.rejected.prompt:
            raise ValueError("chosen and rejected must share the prompt")
        if self.chosen.metadata != self.rejected.metadata:
            raise ValueError("chosen and rejected must share the metadata")
        if (self.chosen.trace, self.chosen.answer) == (self.rejected.trace, self.rejected.answer):
            raise ValueError("chosen and rejected are the same completion, which teaches no preference")

    @property
    def prompt(self) -> str:
        return self.chosen.prompt

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.chosen.metadata


# ----------------------------------------------------------------------------- public API


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read prompt-completion and messages rows (standard or conversational) from a JSONL file."""
    return _read_jsonl(path, _example_from_row)


def write_examples(
    examples: Iterable[Example],
    path: str | os.PathLike,
    style: Literal["prompt_completion", "messages"] = "prompt_completion",
) -> None:
    """Write examples as JSONL rows of `style`, atomically (see the module docstring for the layout)."""
    writers = {"prompt_completion": _completion_row, "messages": _messages_row}
    if style not in writers:
        raise ValueError(f"unknown style {style!r}; expected one of {sorted(writers)}")
    _write_jsonl(path, examples, writers[style])


def read_preferences(path: str | os.PathLike) -> list[PreferencePair]:
    """Read `prompt`/`chosen`/`rejected` rows (standard or conversational) from a JSONL file."""
    return _read_jsonl(path, _pair_from_row)


def write_preferences(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> None:
    """Write pairs as standard `prompt`/`chosen`/`rejected` rows with inline think blocks, atomically."""
    _write_jsonl(path, pairs, _preference_row)


# ----------------------------------------------------------------------------- reading


class _RowError(Exception):
    """A problem in one row; `_read_jsonl` adds the path and line to make a `DataFormatError`."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(problem)
        self.field, self.problem = field, problem


def _read_jsonl(path: str | os.PathLike, parse: Callable[[dict[str, Any]], T]) -> list[T]:
    try:
        # Binary lines split on b"\n" only: str.splitlines would also split inside
        # JSON strings holding raw U+2028 or U+0085, which are legal there.
        file = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    items = []
    with file:
        for line, raw in enumerate(file, start=1):
            try:
                row = _decode_row(raw)
                if row is not None:
                    items.append(parse(row))
            except _RowError as error:
                raise DataFormatError(path, line, error.field, error.problem) from None
    return items


def _decode_row(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, or None for a blank line."""
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate the byte-order mark some editors write
    except UnicodeDecodeError as error:
        raise _RowError(None, f"not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise _RowError(None, f"invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(row, dict):
        raise _RowError(None, f"expected a JSON object, got {_json_type(row)}")
    return row


def _example_from_row(row: dict[str, Any]) -> Example:
    if "messages" in row:
        if "prompt" in row:
            raise _RowError("messages", "a row has either 'messages' or 'prompt'/'completion', not both")
        context, prompt, trace, answer = _read_conversation(row["messages"])
        used = {"messages", "steps"}
    elif "prompt" in row:
        _require_columns(row, ("prompt", "completion"))
        context, prompt = _read_prompt(row["prompt"], "prompt")
        trace, answer = _read_reply(row["completion"], "completion")
        used = {"prompt", "completion", "steps"}
    else:
        raise _RowError(
            None, f"expected columns 'prompt' and 'completion', or 'messages'; got {_column_list(row)}"
        )
    return Example(prompt, trace, answer, _read_steps(row), _metadata(row, used, context))


def _pair_from_row(row: dict[str, Any]) -> PreferencePair:
    _require_columns(row, ("prompt", "chosen", "rejected"))
    context, prompt = _read_prompt(row["prompt"], "prompt")
    metadata = _metadata(row, _PREFERENCE_COLUMNS, context)
    chosen, rejected = (
        Example(prompt, *_read_reply(row[column], column), metadata=dict(metadata))
        for column in ("chosen", "rejected")
    )
    try:
        return PreferencePair(chosen, rejected)
    except ValueError as error:  # prompt and metadata are shared by construction: only sameness is left
        raise _RowError("rejected", str(error)) from None


def _require_columns(row: dict[str, Any], columns: tuple[str, ...]) -> None:
    for column in columns:
        if column not in row:
            needed = ", ".join(f"'{c}'" for c in columns[:-1]) + f" and '{columns[-1]}'"
            hint = "; a preference row is read with read_preferences" if "chosen" in row else ""
            raise _RowError(column, f"missing column: this row needs {needed}, got {_column_list(row)}{hint}")


def _read_prompt(value: Any, field: str) -> tuple[list[dict[str, Any]], str]:
    """(context messages, prompt text) from a string or a conversation ending with the user's message."""
    if isinstance(value, str):
        return [], value
    messages = _check_messages(value, field, expected="a string or a list of messages")
    if not messages:
        raise _RowError(field, "expected at least one message, got an empty list")
    last = len(messages) - 1
    if messages[last]["role"] != "user":
        role = messages[last]["role"]
        raise _RowError(f"{field}[{last}].role", f"the prompt must end with a user message, got '{role}'")
    return messages[:last], messages[last]["content"]


def _read_reply(value: Any, field: str) -> tuple[str, str]:
    """(trace, answer) from a string or a one-message assistant conversation."""
    if isinstance(value, str):
        return _split_think(value, field)
    messages = _check_messages(value, field, expected="a string or a list of messages")
    if len(messages) != 1:
        raise _RowError(field, f"expected one assistant message, got {len(messages)} messages")
    return _read_assistant(messages[0], f"{field}[0]")


def _read_conversation(value: Any) -> tuple[list[dict[str, Any]], str, str, str]:
    """(context, prompt, trace, answer) from a `messages` column: ..., user, assistant."""
    messages = _check_messages(value, "messages")
    if len(messages) < 2:
        raise _RowError("messages", f"expected a user and an assistant message at least, got {len(messages)}")
    context, prompt = _read_prompt(messages[:-1], "messages")
    trace, answer = _read_assistant(messages[-1], f"messages[{len(messages) - 1}]")
    return context, prompt, trace, answer


def _check_messages(value: Any, field: str, expected: str = "a list of messages") -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _RowError(field, f"expected {expected}, got {_json_type(value)}")
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _RowError(f"{field}[{index}]", f"expected a message object, got {_json_type(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise _RowError(f"{field}[{index}].{key}", "missing from the message")
            if not isinstance(message[key], str):
                problem = f"expected a string, got {_json_type(message[key])}"
                raise _RowError(f"{field}[{index}].{key}", problem)
    return value


def _read_assistant(message: dict[str, Any], field: str) -> tuple[str, str]:
    if message["role"] != "assistant":
        raise _RowError(f"{field}.role", f"the reply must be an assistant message, got '{message['role']}'")
    reasonings = []
    for key in REASONING_KEYS:
        value = message.get(key)
        if value is None:  # how exports say "no reasoning"
            continue
        if not isinstance(value, str):
            raise _RowError(f"{field}.{key}", f"expected a string, got {_json_type(value)}")
        reasonings.append(value)
    if len(set(reasonings)) > 1:
        first, second = REASONING_KEYS
        raise _RowError(f"{field}.{second}", f"differs from '{first}'; give the reasoning once")
    if reasonings:
        return reasonings[0].strip(), message["content"].strip()
    return _split_think(message["content"], f"{field}.content")


def _split_think(text: str, field: str) -> tuple[str, str]:
    """(trace, answer) of a completion with an optional leading think block."""
    body = text.lstrip()
    if body.startswith(THINK_OPEN):
        trace, closed, answer = body[len(THINK_OPEN) :].partition(THINK_CLOSE)
        if not closed:
            raise _RowError(field, f"unclosed {THINK_OPEN} block: no {THINK_CLOSE} follows it")
        return trace.strip(), answer.strip()
    if THINK_CLOSE in text:
        # Typically a DeepSeek-R1 style completion whose <think> sits in the prompt's
        # template. Reading it all as the answer would silently train on the trace.
        raise _RowError(field, f"{THINK_CLOSE} without a {THINK_OPEN} at the start; add the opening tag")
    return "", text.strip()


def _read_steps(row: dict[str, Any]) -> tuple[str, ...]:
    steps = row.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
        raise _RowError("steps", f"expected a list of strings, got {_json_type(steps)}")
    return tuple(steps)


def _metadata(row: dict[str, Any], used: Iterable[str], context: list[dict[str, Any]]) -> dict[str, Any]:
    """Every column not consumed, plus the conversation before the prompt."""
    metadata = {key: value for key, value in row.items() if key not in used}
    if context:
        if "context_messages" in metadata:
            raise _RowError("context_messages", "given both as a column and as messages before the prompt")
        metadata["context_messages"] = context
    return metadata


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _column_list(row: dict[str, Any]) -> str:
    return ", ".join(f"'{column}'" for column in row) or "no columns"


# ----------------------------------------------------------------------------- writing


def _write_jsonl(path: str | os.PathLike, items: Iterable[T], to_row: Callable[[T], dict[str, Any]]) -> None:
    # Every line is serialized before the file is touched, and the file is
    # replaced atomically: a bad item leaves the previous file as it was.
    lines = []
    for index, item in enumerate(items):
        try:
            lines.append(json.dumps(to_row(item), ensure_ascii=False) + "\n")
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: cannot write line {index + 1}: {error}") from error
    atomic_write_text(path, "".join(lines))


def _completion_row(example: Example) -> dict[str, Any]:
    row = {"prompt": example.prompt, "completion": _render_think(example.trace, example.answer)}
    return _add_columns(row, example.steps, example.metadata, _EXAMPLE_COLUMNS)


def _messages_row(example: Example) -> dict[str, Any]:
    metadata = dict(example.metadata)
    context = metadata.pop("context_messages", [])
    try:
        _check_messages(context, "context_messages")
    except _RowError as error:
        raise ValueError(f"metadata '{error.field}': {error.problem}") from None
    reply = {"role": "assistant", "content": example.answer, "reasoning_content": example.trace}
    row = {"messages": [*context, {"role": "user", "content": example.prompt}, reply]}
    return _add_columns(row, example.steps, metadata, _EXAMPLE_COLUMNS)


def _preference_row(pair: PreferencePair) -> dict[str, Any]:
    row = {
        "prompt": pair.prompt,
        "chosen": _render_think(pair.chosen.trace, pair.chosen.answer),
        "rejected": _render_think(pair.rejected.trace, pair.rejected.answer),
    }
    return _add_columns(row, (), pair.metadata, _PREFERENCE_COLUMNS)


def _add_columns(
    row: dict[str, Any], steps: tuple[str, ...], metadata: Mapping[str, Any], reserved: frozenset[str]
) -> dict[str, Any]:
    if steps:
        row["steps"] = list(steps)
    for key, value in metadata.items():
        if key in reserved:
            raise ValueError(f"metadata key '{key}' would be read back as the '{key}' column")
        row[key] = value
    return row


def _render_think(trace: str, answer: str) -> str:
    if THINK_CLOSE in trace:
        problem = f"the trace contains {THINK_CLOSE}, which would end the think block early"
        raise ValueError(f"{problem}; write it with style='messages'")
    return f"{THINK_OPEN}\n{trace}\n{THINK_CLOSE}\n\n{answer}"
