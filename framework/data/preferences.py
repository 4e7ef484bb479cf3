"""Preference pairs for DPO: built from a task or read from JSONL, tokenized by a given function.

A pair is one prompt with a `chosen` and a `rejected` completion
(`framework.data.formats.PreferencePair`). The data module tokenizes prompt +
chosen and prompt + rejected with per-token roles, so the regime's mask
strategy decides which tokens are scored and the prompt never is.

Pairs built from a verifiable task (`corrupted_answer_pairs`) keep the
reference trace in both completions and differ only in the answer: chosen has
the correct answer, rejected another problem's answer that the task's checker
rejects. The preference is then exactly "answer what your reasoning says",
and every rejected completion is well-formed text from the task's vocabulary.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from framework.data.collate import collate
from framework.data.datamodule import ExampleBatches
from framework.data.formats import PreferencePair, read_preferences
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.data.tokenize import Tokenize, TokenizedSample

SPLITS = ("train", "val", "test")


def corrupted_answer_pairs(task: Task, examples: Sequence[Example], seed: int = 0) -> list[PreferencePair]:
    """One pair per example: the reference completion vs the same trace with a wrong answer.

    The wrong answer is another example's answer, drawn at random among those
    the task's checker rejects for this example.
    """
    rng = random.Random(seed)
    answers = sorted({example.answer for example in examples})
    pairs = []
    for index, example in enumerate(examples):
        wrong = [answer for answer in answers if not task.check_answer(example, answer)]
        if not wrong:
            raise ValueError(
                f"example {index} (prompt {example.prompt!r}): no other example's answer is wrong for it; "
                "give more (or more varied) examples"
            )
        rejected = Example(example.prompt, example.trace, rng.choice(wrong), example.steps, example.metadata)
        pairs.append(PreferencePair(example, rejected))
    return pairs


def _collate_pairs(
    items: Sequence[tuple[int, PreferencePair, TokenizedSample, TokenizedSample]], pad_token_id: int
) -> dict[str, Any]:
    """Chosen rows first, then rejected rows, padded together: one forward scores both (TRL's concatenated forward)."""
    batch = collate([chosen for _, _, chosen, _ in items] + [rejected for _, _, _, rejected in items], pad_token_id)
    batch["pair_ids"] = torch.tensor([pair_id for pair_id, _, _, _ in items], dtype=torch.long)
    batch["examples"] = [pair.chosen for _, pair, _, _ in items]  # prompt and ground truth, for generation
    return batch


class PreferenceDataModule(ExampleBatches):
    """Train/val/test splits of `PreferencePair`s, tokenized by `tokenize` (e.g. `reasoner.tokenize`).

    Every batch holds `input_ids`, `attention_mask` and `roles` of shape
    `[2B, T]` (the B chosen completions, then the B rejected ones), `pair_ids`
    `[B]` (unique across splits, for precomputed reference log-probs) and
    `examples` (the chosen examples, for generating and checking answers).
    """

    def __init__(
        self,
        tokenize: Tokenize,
        train: Sequence[PreferencePair],
        val: Sequence[PreferencePair] = (),
        test: Sequence[PreferencePair] = (),
        *,
        pad_token_id: int,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        sources: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not train:
            raise ValueError("PreferenceDataModule needs at least one training pair")
        self.tokenize = tokenize
        self.pad_token_id = pad_token_id
        self.splits = {"train": list(train), "val": list(val), "test": list(test)}
        # Where each split came from, for error messages (a file path, or the split's name).
        self.sources = {split: (sources or {}).get(split, f"{split} split") for split in SPLITS}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._tokenized: dict[str, list[tuple[int, PreferencePair, TokenizedSample, TokenizedSample]]] = {}

    @staticmethod
    def items_from(task: Task, problems: Sequence[Example], seed: int) -> list[PreferencePair]:
        """Each problem made a pair by `corrupted_answer_pairs` (the chosen answer right, the rejected one wrong)."""
        return corrupted_answer_pairs(task, problems, seed)

    @classmethod
    def from_jsonl(
        cls,
        tokenize: Tokenize,
        train: str | os.PathLike,
        val: str | os.PathLike | None = None,
        test: str | os.PathLike | None = None,
        *,
        pad_token_id: int,
        **kwargs,
    ) -> PreferenceDataModule:
        """`prompt`/`chosen`/`rejected` rows; a bad row fails with its file, line and field."""
        paths = {"train": train, "val": val, "test": test}
        pairs = {split: read_preferences(path) if path else [] for split, path in paths.items()}
        sources = {split: str(path) for split, path in paths.items() if path}
        return cls(
            tokenize, pairs["train"], pairs["val"], pairs["test"], pad_token_id=pad_token_id, sources=sources, **kwargs
        )

    @property
    def num_pairs(self) -> int:
        return sum(len(pairs) for pairs in self.splits.values())

    def tokenized(self, split: str) -> list[tuple[int, PreferencePair, TokenizedSample, TokenizedSample]]:
        """(pair id, pair, chosen tokens, rejected tokens) for every pair of `split`."""
        if split not in self._tokenized:
            offset = sum(len(self.splits[s]) for s in SPLITS[: SPLITS.index(split)])
            rows = []
            for index, pair in enumerate(self.splits[split]):
                chosen, rejected = self.tokenize(pair.chosen), self.tokenize(pair.rejected)
                if chosen.input_ids == rejected.input_ids:
                    # Different texts can still tokenize alike (spacing); such a pair has no gradient.
                    raise ValueError(
                        f"{self.sources[split]}: pair {index + 1} (prompt {pair.prompt!r}): chosen and rejected are "
                        "the same token sequence once tokenized, which teaches no preference"
                    )
                rows.append((offset + index, pair, chosen, rejected))
            self._tokenized[split] = rows
        return self._tokenized[split]

    def _loader(self, split: str, *, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            self.tokenized(split),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=partial(_collate_pairs, pad_token_id=self.pad_token_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.eval_batch_size)

    def every_pair_dataloader(self) -> list[DataLoader]:
        """Loaders over every non-empty split, unshuffled: what precomputed reference log-probs are computed from."""
        return [self._loader(s, shuffle=False, batch_size=self.eval_batch_size) for s in SPLITS if self.splits[s]]
