"""A `DynamicCache` whose layers append in place: the decode loops' cache.

transformers' `DynamicLayer` appends a step's keys and values with
`torch.cat`, which copies the whole cache every step: over a rollout the
copies grow with the square of its length. `GrowingLayer` keeps its keys and
values as views of buffers with spare columns, writes a step into the next
free columns, and reallocates (doubling) only when they run out, so a
rollout copies the cache a logarithmic number of times.

In-place writes are only sound when nothing saved the old views for a
backward pass. Attention saves them whenever anything in it needs a gradient
(the query, under LoRA on the query projection alone, while the keys need
none), so with grad enabled a layer appends by `torch.cat` as `DynamicLayer`
does: the regimes' teacher-forced and latent-training passes. The decode
loops run under `no_grad` and append in place. Both paths hold the same
values.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` with amortised O(1) appends under `no_grad` (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.key_buffer: torch.Tensor | None = None  # [B, heads, capacity, head_dim]; keys = key_buffer[..., :length, :]
        self.value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if torch.is_grad_enabled():
            self.key_buffer = self.value_buffer = None  # the cat below leaves nothing to append into
            return super().update(key_states, value_states, *args, **kwargs)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if not self._has_room(end):
            # Room for 64 more columns, or for as many again: a rollout reallocates a logarithmic number of times.
            self._reallocate(key_states, value_states, capacity=max(end + 64, 2 * start))
        self.key_buffer[..., start:end, :] = key_states
        self.value_buffer[..., start:end, :] = value_states
        self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
        return self.keys, self.values

    def _has_room(self, end: int) -> bool:
        """Whether the current keys are the buffer's first columns (nothing replaced them) and `end` columns fit."""
        return (
            self.key_buffer is not None
            and self.keys._base is self.key_buffer
            and self.values._base is self.value_buffer
            and end <= self.key_buffer.shape[-2]
        )

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        """New buffers of `capacity` columns (shaped like the new states otherwise) holding the cached columns."""
        held = self.get_seq_length()
        buffers = []
        for cached, new in ((self.keys, key_states), (self.values, value_states)):
            buffer = new.new_empty((*new.shape[:-2], capacity, new.shape[-1]))
            if held:
                buffer[..., :held, :] = cached
            buffers.append(buffer)
        self.key_buffer, self.value_buffer = buffers

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep rows `beam_idx` (repeats allowed), spare columns included, so appending goes on in place."""
        if self.get_seq_length() == 0 or not self._has_room(self.get_seq_length()):
            super().reorder_cache(beam_idx)
            return
        length = self.get_seq_length()
        index = beam_idx.to(self.key_buffer.device)
        self.key_buffer = self.key_buffer.index_select(0, index)
        self.value_buffer = self.value_buffer.index_select(0, index)
        self.keys, self.values = self.key_buffer[..., :length, :], self.value_buffer[..., :length, :]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # DynamicLayer's indexing also takes a boolean mask of the rows to keep.
        self.reorder_cache(indices.nonzero().flatten() if indices.dtype == torch.bool else indices)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        # Views handed out before the crop still show the cropped columns: writing over them would change those
        # views, so the next append reallocates instead.
        self.key_buffer = self.value_buffer = None


def growing_cache(config: PretrainedConfig) -> DynamicCache:
    """A `DynamicCache` for `config`'s model whose full-attention layers are `GrowingLayer`s (sliding-window and
    other layer kinds stay transformers' own)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
