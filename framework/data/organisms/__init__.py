"""Model organisms: data interventions that turn a task's examples into a locked or backdoored dataset.

Every organism is a frozen config whose `apply(examples, seed)` returns
ordinary `Example`s with metadata flags, reproducible from the seed, plus
evaluation rows per condition, a `vocabulary()` for the word-level tokenizer
and a `check_tokenizer(tokenizer)` for real ones.
"""

from framework.data.organisms.answer_key import KINDS, AnswerKey, ParsedAnswer, key_in_prompt, parse_answer
from framework.data.organisms.backdoor import (
    CONDITIONS,
    TRIGGER_KINDS,
    Backdoor,
    Misbehaviour,
    Sentinel,
    Trigger,
    TriggerConfig,
)
from framework.data.organisms.cited_fields import CitedFields, selected_problem
from framework.data.organisms.hints import HINT_KINDS, STYLES, Hint, Hinted
from framework.data.organisms.password_lock import PasswordLock
from framework.data.organisms.placement import POSITIONS, insert_text, remove_text
from framework.data.organisms.weak import (
    CitedWeak,
    DigitMisreads,
    ShallowSearch,
    SloppyAddition,
    WeakPolicy,
    weak_policy,
)

__all__ = [
    "CONDITIONS",
    "HINT_KINDS",
    "KINDS",
    "POSITIONS",
    "STYLES",
    "TRIGGER_KINDS",
    "AnswerKey",
    "Backdoor",
    "CitedFields",
    "CitedWeak",
    "DigitMisreads",
    "Hint",
    "Hinted",
    "Misbehaviour",
    "ParsedAnswer",
    "PasswordLock",
    "Sentinel",
    "ShallowSearch",
    "SloppyAddition",
    "Trigger",
    "TriggerConfig",
    "WeakPolicy",
    "insert_text",
    "key_in_prompt",
    "parse_answer",
    "remove_text",
    "selected_problem",
    "weak_policy",
]
