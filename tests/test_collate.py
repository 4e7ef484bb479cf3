"""Batch layout: left and right padding, alignment on a token, roles, empty rows, devices."""

from __future__ import annotations

import pytest
import torch

from framework.data.collate import (
    attention_mask,
    collate,
    collate_latent,
    left_pad,
    pad,
    padding_offsets,
    right_pad,
)
from framework.data.sample import Role
from framework.data.tokenize import TokenizedSample

ROWS = [[5, 6, 7], [8], [9, 10]]


def test_right_pad_starts_every_row_at_column_0():
    input_ids, mask = right_pad(ROWS, pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert input_ids.dtype == mask.dtype == torch.long


def test_left_pad_ends_every_row_in_the_last_column():
    input_ids, mask = left_pad(ROWS, pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_alignment_puts_the_token_in_one_column_with_padding_on_both_sides():
    rows = [[1, 2, 99, 3], [99, 4, 5, 6, 7], [1, 99]]
    offsets = padding_offsets(rows, align_at=99)
    assert offsets == [0, 2, 1]
    padded = pad(rows, -1, offsets)
    assert padded.tolist() == [[1, 2, 99, 3, -1, -1, -1], [-1, -1, 99, 4, 5, 6, 7], [-1, 1, 99, -1, -1, -1, -1]]
    assert (padded[:, 2] == 99).all()
    assert attention_mask(rows, offsets).tolist() == (padded != -1).long().tolist()


def test_alignment_uses_the_first_occurrence_of_the_token():
    assert padding_offsets([[7, 7, 1], [0, 7]], align_at=7) == [1, 0]


def test_a_row_without_the_alignment_token_is_named():
    with pytest.raises(ValueError, match="row 1 has no token 99"):
        padding_offsets([[99], [1, 2]], align_at=99)


def test_unknown_side_is_refused():
    with pytest.raises(ValueError, match="side must be 'left' or 'right'"):
        padding_offsets(ROWS, side="middle")  # type: ignore[arg-type]


def test_offsets_must_match_the_rows():
    with pytest.raises(ValueError, match="2 offsets for 3 rows"):
        pad(ROWS, 0, [0, 1])


def test_collate_pads_right_with_pad_role():
    batch = collate([TokenizedSample([5, 6, 7], [0, 1, 2]), TokenizedSample([8], [2])], pad_token_id=0)
    assert list(batch) == ["input_ids", "attention_mask", "roles"]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["roles"].tolist() == [[0, 1, 2], [2, Role.PAD, Role.PAD]]


def test_collate_latent_aligns_roles_with_the_ids():
    bot = 50
    samples = [
        TokenizedSample([1, 2, bot, 3], [Role.PROMPT, Role.PROMPT, Role.PROMPT, Role.ANSWER]),
        TokenizedSample([1, bot, 3, 4], [Role.PROMPT, Role.PROMPT, Role.TRACE, Role.ANSWER]),
    ]
    batch = collate_latent(samples, pad_token_id=0, start_token_id=bot)
    assert batch["input_ids"].tolist() == [[1, 2, bot, 3, 0], [0, 1, bot, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert batch["roles"].tolist() == [
        [Role.PROMPT, Role.PROMPT, Role.PROMPT, Role.ANSWER, Role.PAD],
        [Role.PAD, Role.PROMPT, Role.PROMPT, Role.TRACE, Role.ANSWER],
    ]
    with pytest.raises(ValueError, match="row 0 has no token 50"):
        collate_latent([TokenizedSample([1, 2], [0, 0])], pad_token_id=0, start_token_id=bot)


def test_empty_rows_are_all_padding():
    input_ids, mask = left_pad([[], [3, 4]], pad_token_id=0)
    assert input_ids.tolist() == [[0, 0], [3, 4]] and mask.tolist() == [[0, 0], [1, 1]]
    input_ids, mask = right_pad([[], []], pad_token_id=0)
    assert input_ids.shape == mask.shape == (2, 0)


def test_an_empty_batch_is_0_by_0():
    assert pad([], 0).shape == (0, 0)
    assert left_pad([], 0)[0].shape == (0, 0)


def test_tensors_land_on_the_device_asked_for():
    device = torch.device("meta")  # any non-CPU device shows the move; meta needs no accelerator
    input_ids, mask = left_pad(ROWS, 0, device)
    assert input_ids.device == mask.device == device
    assert pad(ROWS, 0, device=device).device == device
    assert right_pad(ROWS, 0)[0].device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensors_on_cuda_equal_those_on_cpu():
    cuda = torch.device("cuda")
    for on_cpu, on_cuda in zip(left_pad(ROWS, 0), left_pad(ROWS, 0, cuda)):
        assert on_cuda.device.type == "cuda"
        assert torch.equal(on_cuda.cpu(), on_cpu)
