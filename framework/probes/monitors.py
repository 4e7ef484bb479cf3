"""Monitors: episodes in, one suspicion score per episode out (the `Monitor` protocol of `episode.py`).

- `KeywordMonitor`: how many of its regexes match the trace (or other parts);
  the baseline every monitoring paper starts from.
- `TraceClassifier`: a bag-of-embeddings logistic classifier over tokens,
  trained in-framework (a LightningModule) on labelled episodes and
  validated with torchmetrics AUROC and accuracy. Small on purpose: it is a
  monitor, not a second model under study.
- `ThoughtProbe`: a linear probe on a latent reasoner's continuous thoughts,
  for when there is no trace to read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from transformers import PreTrainedTokenizerBase

from framework.probes.episode import Episode
from framework.probes.linear_probe import (
    LinearProbe,
    ThoughtFeatures,
    class_labels,
    fit_linear_probe,
    thought_features,
)

Part = Literal["prompt", "trace", "answer"]
PARTS: tuple[str, ...] = ("prompt", "trace", "answer")


def _check_parts(read: Sequence[str]) -> tuple[str, ...]:
    read = tuple(read)
    if not read or any(part not in PARTS for part in read):
        raise ValueError(f"read must name one or more of {list(PARTS)}, got {list(read)}")
    return read


def episode_text(episode: Episode, read: Sequence[str]) -> str:
    """The parts of an episode a text monitor reads, joined by spaces."""
    return " ".join(getattr(episode, part) for part in read)


def _episode_labels(episodes: Sequence[Episode], labels: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    """One 0/1 label per episode (1 = misbehaving), both present: what a monitor is fitted on."""
    return class_labels(labels, len(episodes), per="episode", binary=True)


class KeywordMonitor:
    """Score = how many of `patterns` (regexes, case-insensitive) occur in the parts it reads."""

    def __init__(self, patterns: Sequence[str], read: Sequence[Part] = ("trace",)) -> None:
        if not patterns:
            raise ValueError("a KeywordMonitor needs at least one pattern")
        self.read = _check_parts(read)
        self.patterns = []
        for pattern in patterns:
            try:
                self.patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise ValueError(f"monitor pattern {pattern!r} is not a valid regex: {error}") from None

    def score(self, episodes: Sequence[Episode]) -> torch.Tensor:
        texts = [episode_text(episode, self.read) for episode in episodes]
        return torch.tensor([float(sum(p.search(text) is not None for p in self.patterns)) for text in texts])


class TraceClassifier(L.LightningModule):
    """Mean of token embeddings → one logit: P(misbehaving | the text of the parts it reads).

    Train it with `fit_trace_classifier`, or inside your own Trainer on
    batches from `TraceClassifier.batch(episodes, labels)`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        read: Sequence[Part] = ("trace",),
        embedding_dim: int = 32,
        lr: float = 3e-2,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.read = _check_parts(read)
        self.embedding = nn.EmbeddingBag(len(tokenizer), embedding_dim, mode="mean")
        self.head = nn.Linear(embedding_dim, 1)
        self.val_auroc, self.val_accuracy = BinaryAUROC(), BinaryAccuracy()

    def batch(self, episodes: Sequence[Episode], labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Token ids of each episode's text as one flat tensor plus bag offsets (EmbeddingBag's layout)."""
        ids = [self.tokenizer(episode_text(e, self.read), add_special_tokens=False)["input_ids"] for e in episodes]
        offsets = torch.tensor([0] + [len(row) for row in ids[:-1]]).cumsum(0)
        batch = {"ids": torch.tensor([i for row in ids for i in row], dtype=torch.long), "offsets": offsets}
        if labels is not None:
            batch["labels"] = torch.as_tensor(labels).float()
        return batch

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids, offsets)).squeeze(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["ids"], batch["offsets"])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["ids"], batch["offsets"])
        labels = batch["labels"].long()
        self.val_auroc.update(logits.sigmoid(), labels)
        self.val_accuracy.update(logits.sigmoid(), labels)
        self.log("val/loss", nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"]), batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        self.log("val/auroc", self.val_auroc.compute())
        self.log("val/accuracy", self.val_accuracy.compute())
        self.val_auroc.reset()
        self.val_accuracy.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def score(self, episodes: Sequence[Episode]) -> torch.Tensor:
        if not episodes:
            return torch.zeros(0)
        batch = self.batch(episodes)
        was_training = self.training
        self.eval()
        try:
            return self(batch["ids"].to(self.device), batch["offsets"].to(self.device)).sigmoid().cpu()
        finally:
            self.train(was_training)


def fit_trace_classifier(
    episodes: Sequence[Episode],
    labels: Sequence[bool] | torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    *,
    val_episodes: Sequence[Episode] = (),
    val_labels: Sequence[bool] | torch.Tensor = (),
    max_epochs: int = 30,
    batch_size: int = 32,
    seed: int = 0,
    trainer_kwargs: dict[str, Any] | None = None,
    **classifier_kwargs: Any,
) -> TraceClassifier:
    """Train a `TraceClassifier` on labelled episodes (1 = misbehaving) in a Lightning Trainer.

    With validation episodes, `val/auroc` and `val/accuracy` are logged every epoch.
    `seed` fixes the initialisation and the shuffling; the caller's global
    Python, NumPy and torch generators are left where they were (a monitor
    fitted mid-recipe must not change what the recipe draws next).
    """
    labels = _episode_labels(episodes, labels)
    shuffling = torch.Generator().manual_seed(seed)

    def loader(eps: Sequence[Episode], ys: torch.Tensor, shuffle: bool) -> DataLoader:
        rows = list(zip(eps, ys.tolist()))
        return DataLoader(
            rows, batch_size=batch_size, shuffle=shuffle, generator=shuffling,
            collate_fn=lambda items: classifier.batch([e for e, _ in items], [y for _, y in items]),
        )

    val_loader = None
    if val_episodes:
        val_loader = loader(val_episodes, _episode_labels(val_episodes, val_labels), shuffle=False)
    options = {
        "max_epochs": max_epochs, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
    }
    with torch.random.fork_rng():  # the initialisation draws from torch's global generator: seed a copy of it
        torch.manual_seed(seed)
        classifier = TraceClassifier(tokenizer, **classifier_kwargs)
        L.Trainer(**(options | (trainer_kwargs or {}))).fit(classifier, loader(episodes, labels, True), val_loader)
    return classifier.eval()


class ThoughtProbe:
    """A linear probe on continuous thoughts as a monitor: score = P(class 1 | features of `Episode.thoughts`)."""

    def __init__(self, probe: LinearProbe, features: ThoughtFeatures = "mean") -> None:
        self.probe = probe
        self.features = features

    @classmethod
    def fit(
        cls, episodes: Sequence[Episode], labels: Sequence[bool] | torch.Tensor, features: ThoughtFeatures = "mean",
        **probe_kwargs: Any,
    ) -> ThoughtProbe:
        labels = _episode_labels(episodes, labels)
        probe = fit_linear_probe(thought_features([e.thoughts for e in episodes], features), labels, **probe_kwargs)
        return cls(probe, features)

    def score(self, episodes: Sequence[Episode]) -> torch.Tensor:
        if not episodes:
            return torch.zeros(0)
        return self.probe.score(thought_features([e.thoughts for e in episodes], self.features))
