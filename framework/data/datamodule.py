"""A `LightningDataModule` of examples, tokenized by a function it is given (usually `Reasoner.tokenize`).

The data layer sits below the models, so a data module never holds a
`Reasoner`: it takes what it uses of one, a function from `Example` to
`TokenizedSample` and the id that pads the batches. A split is tokenized when
it is first loaded, so a bound `reasoner.tokenize` renders it in the state
the reasoner has then (a latent reasoner's stage).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import lightning as L
from torch.utils.data import DataLoader

from framework.data.collate import collate
from framework.data.formats import read_examples
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.data.tokenize import Tokenize, TokenizedSample
from framework.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11


def generate_splits(task: Task, seed: int, *, n_train: int, n_val: int, n_test: int) -> dict[str, list[Example]]:
    """Disjoint train/val/test problems, a deterministic function of `seed`.

    Problems are drawn as one stream of distinct prompts: test first, then
    val, then train, so growing the training set never changes the
    evaluation sets.
    """
    rng = random.Random(seed)
    wanted = n_test + n_val + n_train
    seen: set[str] = set()
    problems: list[Example] = []
    attempts = 0
    while len(problems) < wanted:
        attempts += 1
        if attempts > 20 * wanted + 1000:  # a user's sizes against the task's: the command line prints it in one line
            raise ConfigError(
                f"task {task.name!r} yielded only {len(problems)} distinct problems in {attempts} draws, "
                f"but {wanted} were asked for (n_train={n_train}, n_val={n_val}, n_test={n_test}); "
                "make the task larger or ask for fewer"
            )
        example = task.generate(rng)
        if example.prompt not in seen:
            seen.add(example.prompt)
            problems.append(example)
    return {
        "test": problems[:n_test],
        "val": problems[n_test : n_test + n_val],
        "train": problems[n_test + n_val :],
    }


def _collate_with_examples(items: list[tuple[Example, TokenizedSample]], pad_token_id: int) -> dict[str, Any]:
    """Teacher-forced tensors (for a loss) plus the raw examples (for generation, checking or re-formatting)."""
    batch = collate([sample for _, sample in items], pad_token_id)
    batch["examples"] = [example for example, _ in items]
    return batch


class ExampleBatches(L.LightningDataModule):
    """A data module whose batches carry their `examples` beside the tensors."""

    @classmethod
    def from_task(
        cls,
        task: Task,
        tokenize: Tokenize,
        *,
        pad_token_id: int,
        n_train: int,
        n_val: int,
        n_test: int = 0,
        seed: int = 0,
        **kwargs: Any,
    ) -> Self:
        """Disjoint problems of `task` (as `generate_splits`), made this module's items by `items_from`."""
        splits = generate_splits(task, seed, n_train=n_train, n_val=n_val, n_test=n_test)
        items = {split: cls.items_from(task, problems, seed) for split, problems in splits.items()}
        return cls(tokenize, items["train"], items["val"], items["test"], pad_token_id=pad_token_id, **kwargs)

    @staticmethod
    def items_from(task: Task, problems: Sequence[Example], seed: int) -> list[Any]:
        """What a split of problems becomes: the problems themselves, unless a subclass makes more of them."""
        return list(problems)

    def transfer_batch_to_device(self, batch: Any, device, dataloader_idx: int) -> Any:
        # Examples are plain Python objects: move only the tensors beside them.
        examples = batch.pop("examples", None) if isinstance(batch, dict) else None
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        if examples is not None:
            batch["examples"] = examples
        return batch


class ReasoningDataModule(ExampleBatches):
    """Serves train/val/test splits of `Example`s, tokenized by `tokenize` (e.g. `reasoner.tokenize`).

    Batches hold `input_ids`, `attention_mask` and `roles`, and the `examples`
    they came from: evaluation generates and checks answers from them, and a
    regime whose format changes during training (`LatentSFT`'s curriculum
    stages) re-tokenizes them.
    """

    def __init__(
        self,
        tokenize: Tokenize,
        train: Sequence[Example],
        val: Sequence[Example],
        test: Sequence[Example] = (),
        *,
        pad_token_id: int,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not train:
            raise ValueError("ReasoningDataModule needs at least one training example")
        self.tokenize = tokenize
        self.pad_token_id = pad_token_id
        self.splits = {"train": list(train), "val": list(val), "test": list(test)}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._tokenized: dict[str, list[TokenizedSample]] = {}

    @classmethod
    def from_jsonl(
        cls,
        tokenize: Tokenize,
        train: str | os.PathLike,
        val: str | os.PathLike,
        test: str | os.PathLike | None = None,
        *,
        pad_token_id: int,
        **kwargs,
    ) -> ReasoningDataModule:
        return cls(
            tokenize,
            read_examples(train),
            read_examples(val),
            read_examples(test) if test else (),
            pad_token_id=pad_token_id,
            **kwargs,
        )

    def tokenized(self, split: str) -> list[TokenizedSample]:
        if split not in self._tokenized:
            self._tokenized[split] = [self.tokenize(example) for example in self.splits[split]]
        return self._tokenized[split]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            list(zip(self.splits["train"], self.tokenized("train"))),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            collate_fn=partial(_collate_with_examples, pad_token_id=self.pad_token_id),
        )

    def _evaluation_loader(self, split: str) -> DataLoader:
        return DataLoader(
            list(zip(self.splits[split], self.tokenized(split))),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=partial(_collate_with_examples, pad_token_id=self.pad_token_id),
        )


    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")
