"""`framework.models.kv_cache`: a `GrowingLayer` holds what transformers' `DynamicLayer` holds after any sequence of
appends, row selections and crops, appends in place when it has room, and under autograd appends by `torch.cat`
with the same gradients; a model decodes the same logits through either cache."""

from __future__ import annotations

import pytest
import torch
from _rounding import rounding_tolerance
from transformers import DynamicCache, Qwen3Config
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from framework.data.collate import left_pad
from framework.models import FAMILIES, build_model
from framework.models.backbone import cache_argument, position_ids_from_mask
from framework.models.kv_cache import GrowingLayer, growing_cache


def _states(generator: torch.Generator, rows: int, columns: int, requires_grad: bool = False):
    shape = (rows, 3, columns, 5)  # [B, heads, T, head_dim]
    return (torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_(requires_grad),
            torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_(requires_grad))


@torch.no_grad()  # where the decode loops append (in place)
def test_a_growing_layer_holds_what_a_dynamic_layer_holds_through_appends_selections_and_crops():
    generator = torch.Generator().manual_seed(0)
    growing, dynamic = GrowingLayer(), DynamicLayer()
    rows = 4

    def both(action, *args):
        for layer in (growing, dynamic):
            getattr(layer, action)(*args)

    def append(columns: int):
        keys, values = _states(generator, rows, columns)
        returned = growing.update(keys, values)
        expected = dynamic.update(keys, values)
        for got, want in zip(returned, expected):
            assert torch.equal(got, want)

    append(7)  # a prompt
    buffer = growing.key_buffer
    for _ in range(30):  # decode steps: in place while the buffer has room (7 + 64 columns)
        append(1)
    assert growing.key_buffer is buffer and growing.get_seq_length() == 37
    both("reorder_cache", torch.tensor([2, 0, 0, 3, 1, 2]))  # GRPO's gather: repeats and a new order
    rows = 6
    append(1)
    both("batch_select_indices", torch.tensor([5, 1, 4]))  # finished rows leave
    rows = 3
    append(1)
    both("batch_select_indices", torch.tensor([True, False, True]))  # or as a boolean mask
    rows = 2
    append(40)  # past the capacity: reallocated, still equal
    both("crop", -5)
    append(2)
    for got, want in ((growing.keys, dynamic.keys), (growing.values, dynamic.values)):
        assert torch.equal(got, want)
    assert growing.get_seq_length() == dynamic.get_seq_length() == 76


def test_views_handed_out_before_a_crop_keep_their_values_through_later_appends():
    generator = torch.Generator().manual_seed(3)
    layer = GrowingLayer()
    with torch.no_grad():
        layer.update(*_states(generator, 2, 7))
        keys, values = layer.update(*_states(generator, 2, 1))
        before = keys.clone(), values.clone()
        layer.crop(-3)
        layer.update(*_states(generator, 2, 2))  # columns 5 and 6 again: in a new buffer, not over `keys`
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])


def test_with_grad_enabled_an_append_leaves_the_views_attention_saved_for_backward_untouched():
    """A query that needs a gradient (LoRA on the query projection alone) makes attention save keys and values
    that need none: the next step must not write into the buffer those views share."""
    generator = torch.Generator().manual_seed(4)
    layer = GrowingLayer()
    with torch.no_grad():
        layer.update(*_states(generator, 2, 4))  # a prompt cached for decoding, in a buffer
    query = torch.randn(2, 3, 1, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    keys, values = layer.update(*_states(generator, 2, 1))
    attended = torch.softmax(query @ keys.transpose(-1, -2), dim=-1) @ values
    layer.update(*_states(generator, 2, 1))  # the next position
    attended.sum().backward()  # an in-place append would fail here: "modified by an inplace operation"
    assert query.grad is not None and bool(query.grad.abs().sum() > 0)


def test_under_autograd_a_growing_layer_appends_by_cat_with_dynamic_layers_gradients():
    generator = torch.Generator().manual_seed(1)
    steps = [_states(generator, 2, columns, requires_grad=True) for columns in (4, 1, 1, 3)]
    gradients = []
    for layer in (GrowingLayer(), DynamicLayer()):
        outputs = [layer.update(keys, values) for keys, values in steps]
        # Every step's returned views enter the loss, as each step's attention saves them for backward.
        loss = sum((keys.sin() * values).sum() * (i + 1) for i, (keys, values) in enumerate(outputs))
        gradients.append(torch.autograd.grad(loss, [t for pair in steps for t in pair]))
    for got, want in zip(*gradients):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_growing_cache_grows_full_attention_layers_and_leaves_sliding_window_ones_to_transformers():
    config = Qwen3Config(vocab_size=32, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, intermediate_size=32, use_sliding_window=True, sliding_window=4,
                         layer_types=["full_attention", "sliding_attention", "full_attention"])
    kinds = [type(layer) for layer in growing_cache(config).layers]
    assert kinds == [GrowingLayer, DynamicSlidingWindowLayer, GrowingLayer]


def _decode_logits(model, cache, input_ids, attention_mask, fed: torch.Tensor) -> list[torch.Tensor]:
    """The last position's logits at each of `fed`'s steps (the prompts, then one fed token per row per step), a
    row leaving the batch after step 2 as a finished row leaves the decode loop."""
    mask, positions, logits = attention_mask, position_ids_from_mask(attention_mask), []
    ids, rows = input_ids, torch.arange(len(input_ids))
    with torch.no_grad():
        for step in range(fed.shape[1] + 1):
            logits.append(model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_argument(cache),
                                use_cache=True, logits_to_keep=1).logits[:, -1])
            if step == fed.shape[1]:
                break
            if step == 2:
                keep = torch.tensor([0, 2])
                cache.reorder_cache(keep)
                rows, mask, positions = rows[keep], mask[keep], positions[keep]
            ids = fed[rows, step, None]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = positions[:, -1:] + 1
    return logits


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_decodes_the_same_logits_through_either_cache(word_tokenizer, family):
    """The two caches hold the same values; only the attention kernel's reading of a strided view against a
    contiguous tensor may round differently, within what float32 rounding allows (`rounding_tolerance`)."""
    model = build_model(family, "1m", word_tokenizer, seed=0).eval()
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(10, len(word_tokenizer), (n,), generator=generator).tolist() for n in (3, 7, 5)]
    fed = torch.randint(10, len(word_tokenizer), (3, 6), generator=generator)
    input_ids, attention_mask = left_pad(prompts, word_tokenizer.pad_token_id, "cpu")
    growing = _decode_logits(model, growing_cache(model.config), input_ids, attention_mask, fed)
    dynamic = _decode_logits(model, DynamicCache(config=model.config), input_ids, attention_mask, fed)
    gold_model = build_model(family, "1m", word_tokenizer, seed=0).double().eval()
    gold = _decode_logits(gold_model, DynamicCache(config=gold_model.config), input_ids, attention_mask, fed)
    for got, want, exact in zip(growing, dynamic, gold):
        tolerance = rounding_tolerance(want, exact)
        assert float((got - want).abs().max()) <= tolerance
