"""Token rows -> rectangular tensors: the one place that decides where padding goes.

A batch is laid out in two steps. `padding_offsets` decides how many pad
columns go before each row: none (right padding, for teacher-forced losses),
as many as make every row end in the last column (left padding, so a batch's
next tokens are generated in one column), or as many as put one token of
every row in the same column (`<bot>` for latent rows). `pad` then writes any
per-token field of the rows (token ids, roles, labels) at those offsets, so
every field of a batch, and its `attention_mask`, share one layout.

Every tensor is `torch.long`, built on the CPU and moved to `device` once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from framework.data.sample import Role
from framework.data.tokenize import TokenizedSample

Side = Literal["left", "right"]


def padding_offsets(
    sequences: Sequence[Sequence[int]], *, side: Side = "right", align_at: int | None = None
) -> list[int]:
    """The number of pad columns before each row.

    `side="right"` puts none (padding follows each row); `side="left"` puts
    enough that every row ends in the last column. `align_at` (a token id)
    overrides `side`: every row's first `align_at` token lands in the same
    column, padding filling both sides. A row without that token cannot be
    aligned, and the error names it.
    """
    if align_at is not None:
        starts = []
        for row, sequence in enumerate(sequences):
            if align_at not in sequence:
                raise ValueError(f"row {row} has no token {align_at} to align the batch on")
            starts.append(sequence.index(align_at))
        return [max(starts) - start for start in starts]
    if side == "right":
        return [0] * len(sequences)
    if side == "left":
        longest = max((len(sequence) for sequence in sequences), default=0)
        return [longest - len(sequence) for sequence in sequences]
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def pad(
    sequences: Sequence[Sequence[int]],
    pad_value: int,
    offsets: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`[N, T]` long tensor: row i starts at column `offsets[i]` (0 for all when None), `pad_value` elsewhere.

    `T` is the smallest width that holds every row at its offset; an empty
    batch is `[0, 0]`.
    """
    if offsets is None:
        offsets = [0] * len(sequences)
    if len(offsets) != len(sequences):
        raise ValueError(f"{len(offsets)} offsets for {len(sequences)} rows")
    width = max((offset + len(sequence) for offset, sequence in zip(offsets, sequences)), default=0)
    rows = [
        [pad_value] * offset + list(sequence) + [pad_value] * (width - offset - len(sequence))
        for offset, sequence in zip(offsets, sequences)
    ]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), width).to(device)


def attention_mask(
    sequences: Sequence[Sequence[int]], offsets: Sequence[int] | None = None, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """1 on the rows' own tokens, 0 on padding, in the layout `pad` gives the same rows and offsets."""
    return pad([[1] * len(sequence) for sequence in sequences], 0, offsets, device=device)


def left_pad(
    sequences: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of prompts left-padded, so every row's next token is generated at the same
    column."""
    offsets = padding_offsets(sequences, side="left")
    return pad(sequences, pad_token_id, offsets, device=device), attention_mask(sequences, offsets, device=device)


def right_pad(
    sequences: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of rows right-padded, every row starting at position 0 (teacher forcing)."""
    return pad(sequences, pad_token_id, device=device), attention_mask(sequences, device=device)


def collate(
    samples: Sequence[TokenizedSample], pad_token_id: int, *, align_at: int | None = None
) -> dict[str, torch.Tensor]:
    """A training batch: `input_ids`, `attention_mask` and `roles` (`Role.PAD` on padding).

    Right-padded, or aligned on the token id `align_at` (see `padding_offsets`).
    """
    ids = [sample.input_ids for sample in samples]
    offsets = padding_offsets(ids, align_at=align_at)
    return {
        "input_ids": pad(ids, pad_token_id, offsets),
        "attention_mask": attention_mask(ids, offsets),
        "roles": pad([sample.roles for sample in samples], int(Role.PAD), offsets),
    }


def collate_latent(samples: Sequence[TokenizedSample], pad_token_id: int, start_token_id: int) -> dict[str, torch.Tensor]:
    """`collate` with every row's `<bot>` (`start_token_id`) in one column: left padding before it, right after.

    Latent rows hold their thoughts right after `<bot>`, so aligned rows walk
    their thoughts in the same columns, one position per column, and the walk
    is only as long as the longest row's thoughts (Coconut's collator does the
    same). A row without `<bot>` is not in the latent format: a ValueError names it.
    """
    return collate(samples, pad_token_id, align_at=start_token_id)
