"""Linear probes: is a label linearly decodable from features (latent thoughts, hidden states)?

`fit_linear_probe` fits a multinomial logistic regression (standardised
features, L2 penalty) by full-batch L-BFGS: deterministic, a few
milliseconds for the sizes a probe sees, and convex, so a probe that fails
says "not linearly decodable", not "not trained long enough". `evaluate`
scores it with torchmetrics (accuracy and AUROC) on held-out features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    multiclass_accuracy,
    multiclass_auroc,
)

ThoughtFeatures = Literal["mean", "last", "concat"]


def thought_features(thoughts: Sequence[torch.Tensor | None], how: ThoughtFeatures = "mean") -> torch.Tensor:
    """One feature row per episode from its `[k, H]` continuous thoughts.

    `mean` and `last` give `[n, H]`; `concat` gives `[n, k·H]` and needs the
    same k everywhere (it keeps which thought said what).
    """
    for i, t in enumerate(thoughts):
        if t is None or t.dim() != 2 or t.shape[0] == 0:
            shape = None if t is None else tuple(t.shape)
            raise ValueError(f"episode {i} has no `[k, H]` thoughts (got {shape}); a thought probe needs a latent reasoner")
    if how == "mean":
        return torch.stack([t.float().mean(0) for t in thoughts])
    if how == "last":
        return torch.stack([t.float()[-1] for t in thoughts])
    if how == "concat":
        shapes = {tuple(t.shape) for t in thoughts}
        if len(shapes) > 1:
            raise ValueError(f"concat features need the same [k, H] in every episode, got {sorted(shapes)}")
        return torch.stack([t.float().flatten() for t in thoughts])
    raise ValueError(f"how must be 'mean', 'last' or 'concat', got {how!r}")


class LinearProbe(nn.Module):
    """Standardise, then one linear layer to `num_classes` logits."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features.float() - self.mean) / self.std)

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self(features).softmax(-1)

    @torch.no_grad()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Probability of class 1 (for a binary probe: "positive", e.g. misbehaving)."""
        return self.predict_proba(features)[:, 1]

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Accuracy and AUROC (macro one-vs-rest when there are more than two classes) with torchmetrics."""
        _check_features(features)
        labels = class_labels(labels, features.shape[0], per="feature row")
        probs = self.predict_proba(features)
        if self.num_classes == 2:
            return {
                "accuracy": binary_accuracy(probs[:, 1], labels).item(),
                "auroc": binary_auroc(probs[:, 1], labels).item(),
            }
        return {
            "accuracy": multiclass_accuracy(probs, labels, num_classes=self.num_classes, average="micro").item(),
            "auroc": multiclass_auroc(probs, labels, num_classes=self.num_classes).item(),
        }


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> LinearProbe:
    """A logistic-regression probe from `features [n, d]` to integer `labels [n]` (classes 0 … C-1).

    `l2` is the penalty on the weights (per sample, on standardised features);
    `num_classes` defaults to labels.max() + 1, and is at least 2.
    """
    _check_features(features)
    labels = class_labels(labels, features.shape[0], per="feature row")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    num_classes = num_classes or max(2, int(labels.max()) + 1)
    if int(labels.max()) >= num_classes:
        raise ValueError(f"labels go up to {int(labels.max())} but num_classes is {num_classes}")
    features = features.detach().float()
    probe = LinearProbe(features.shape[1], num_classes)
    probe.mean.copy_(features.mean(0))
    probe.std.copy_(features.std(0, unbiased=False).clamp_min(1e-6))  # constant features stay 0, not NaN
    optimizer = torch.optim.LBFGS(probe.linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(probe(features), labels) + l2 * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.eval()


def class_labels(
    labels: torch.Tensor | Sequence[int] | Sequence[bool], n: int, *, per: str = "row", binary: bool = False
) -> torch.Tensor:
    """`labels` as a `[n]` long tensor of class indices, one per `per` (feature row, episode, …).

    ValueError for a wrong length, an empty or negative label, or one that is
    not a whole number (a cast would silently turn 0.5 into class 0). A probe
    takes any number of classes, even one; `binary=True` is the stricter
    contract of a two-class monitor fitted on them: 0/1 with both present.
    """
    labels = torch.as_tensor(labels)
    if labels.shape != (n,):
        raise ValueError(f"need one label per {per}: {n} {per}s, labels of shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"labels must be whole class indices, got {labels.tolist()}")
    labels = labels.long()
    if binary and set(labels.tolist()) != {0, 1}:
        raise ValueError(f"labels must be 0/1 with both classes present, got {sorted(set(labels.tolist()))}")
    if labels.numel() == 0 or int(labels.min()) < 0:
        raise ValueError("labels must be a non-empty tensor of class indices >= 0")
    return labels


def _check_features(features: torch.Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"features must be [n, d], got shape {tuple(features.shape)}")
