"""Latent rollouts and training steps: the workload, the baselines and the measurements.

Shared by the pytest-benchmark suite (``test_latent_rollout.py``) and
``python -m benchmarks.report --suite latent``. One workload, one model, one
set of prompts for every provider:

Rollouts (k thoughts, then a short greedy answer), thoughts·rows per second:

- ``coconut loop (a)``: batch 1; every thought and every answer token rebuilds
  the input embeddings and re-runs the whole sequence before it, no cache.
- ``coconut generate (a')``: the algorithm of Coconut's released ``generate``
  (facebookresearch/coconut ``coconut.py``), batch 1: the prompt prefix once,
  then one position per thought against a KV cache (the embeddings rebuilt
  every pass), then every answer token re-runs the whole sequence uncached.
  The issue describes Coconut's loop as re-running the prefix per thought; its
  code caches the thoughts, so both are measured.
- ``hf cache loop (b)``: a plain batched loop over the Hugging Face model with
  its ``DynamicCache``: the prefix in one call, then one position per step,
  thoughts fed back by hand, greedy tokens from the LM head.
- ``thoughtlab (c)``: ``framework.rollout.latent.latent_rollout``.

Training step (forward + backward of the completion loss), same batch:

- ``coconut full passes``: k + 1 full-sequence forwards, pass i filling thought
  i (the algorithm of Coconut's paper, and the reference in
  ``tests/test_latent.py``; Coconut's released training code already reuses a
  KV cache of the prefix for its passes).
- ``thoughtlab``: ``framework.models.latent.latent_forward``, one cached
  position per thought.

Both losses go through ``framework.regimes.loss.hidden_states_loss``; only the
forward differs. Time is wall clock (``torch.cuda.synchronize`` on GPU),
providers interleaved round by round, medians reported.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from transformers import DynamicCache, PreTrainedModel

from framework.data.collate import collate_latent, left_pad
from framework.data.masks import TRAIN_ON_COMPLETION
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import build_word_tokenizer
from framework.models import LatentConfig, Reasoner, build_model, latent_forward
from framework.models.backbone import cache_argument, position_ids_from_mask
from framework.regimes.loss import hidden_states_loss
from framework.rollout import SamplingConfig, latent_rollout
from framework.rollout.sampling import cut_after_eos


@dataclass(frozen=True)
class Workload:
    """The model, the batch and the prompts every provider runs.

    Prompts are addition chains of `min_terms` … `max_terms` numbers in the
    latent format of the final curriculum stage
    (`prompt <think> <bot> <latent> x k <eot>`, k = `thoughts_per_step * max_stage`),
    so rows differ in length (2 * terms + 9 tokens) and are left-padded.
    The model is randomly initialised with weight matrices drawn from
    N(0, `init_std`): with Hugging Face's default init (std 0.02) a 20m model
    writes one token over and over whatever the prompt and thoughts, so equal
    completions would not show that two providers compute the same thing.
    """

    family: str = "llama"
    size: str = "20m"
    batch: int = 32
    min_terms: int = 12
    max_terms: int = 20
    thoughts_per_step: int = 2
    max_stage: int = 3
    answer_tokens: int = 4
    init_std: float = 0.05
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    seed: int = 0

    @property
    def thoughts(self) -> int:
        return self.thoughts_per_step * self.max_stage

    def describe(self) -> str:
        return (f"{self.family} {self.size}, batch {self.batch}, {self.thoughts} thoughts + {self.answer_tokens} "
                f"greedy answer tokens, prompts {2 * self.min_terms + 9}-{2 * self.max_terms + 9} tokens, "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}")


CPU_WORKLOAD = Workload()
GPU_WORKLOAD = Workload(batch=64, device="cuda", dtype=torch.bfloat16)


@dataclass
class Setup:
    """A built workload: the reasoner, its rollout prompts and a teacher-forced training batch."""

    workload: Workload
    reasoner: Reasoner
    prompts: list[list[int]]
    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, labels, weights (final stage, with the answer)

    @property
    def model(self) -> PreTrainedModel:
        return self.reasoner.model

    @property
    def ids(self) -> dict[str, int]:
        tokenizer = self.reasoner.tokenizer
        return {"latent_token_id": self.reasoner.latent_token_id, "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id}


def build_setup(workload: Workload) -> Setup:
    """Build the model (random init, seeded) and the prompts of `workload`."""
    tasks = [AdditionChain(n_terms=n) for n in range(workload.min_terms, workload.max_terms + 1)]
    tokenizer = build_word_tokenizer(tasks[-1].vocabulary())
    model = build_model(workload.family, workload.size, tokenizer, seed=workload.seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:  # embeddings and projections; norms keep their ones
                parameter.normal_(0.0, workload.init_std)
    model = model.to(workload.device, workload.dtype).eval()
    config = LatentConfig(thoughts_per_step=workload.thoughts_per_step, max_stage=workload.max_stage,
                          step_separator=AdditionChain.step_separator)
    reasoner = Reasoner(model, tokenizer, "latent", latent=config)
    rng = random.Random(workload.seed)
    examples = [rng.choice(tasks).generate(rng) for _ in range(workload.batch)]
    prompts = [reasoner.prompt_ids(example) for example in examples]
    batch = collate_latent([reasoner.tokenize(example) for example in examples], tokenizer.pad_token_id,
                           reasoner.latent_start_id)
    labels, weights = TRAIN_ON_COMPLETION.apply(batch["input_ids"], batch["roles"])
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels,
             "weights": weights}
    return Setup(workload, reasoner, prompts, {k: v.to(workload.device) for k, v in batch.items()})


# -- rollouts ------------------------------------------------------------------------------------


def _greedy_token(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Greedy next token `[B]` from the last hidden state `[B, H]` (the LM head on that one position)."""
    return model.get_output_embeddings()(hidden).argmax(-1)


def _finished(tokens: list[int], eos_token_id: int, max_new_tokens: int) -> bool:
    return len(tokens) >= max_new_tokens or (bool(tokens) and tokens[-1] == eos_token_id)


def coconut_loop(model: PreTrainedModel, prompts: Sequence[Sequence[int]], *, latent_token_id: int,
                 eos_token_id: int, max_new_tokens: int, **_) -> list[list[int]]:
    """(a) One row at a time; each thought and each answer token re-runs the whole embedded sequence before it."""
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    completions = []
    for prompt in prompts:
        embeds = embed(torch.tensor([prompt], device=device))
        for column in [i for i, token in enumerate(prompt) if token == latent_token_id]:
            thought = model.base_model(inputs_embeds=embeds[:, :column]).last_hidden_state[:, -1:]
            embeds = torch.cat([embeds[:, :column], thought, embeds[:, column + 1:]], dim=1)
        tokens: list[int] = []
        while not _finished(tokens, eos_token_id, max_new_tokens):
            token = _greedy_token(model, model.base_model(inputs_embeds=embeds).last_hidden_state[:, -1])
            tokens.append(token.item())
            embeds = torch.cat([embeds, embed(token)[:, None]], dim=1)
        completions.append(tokens)
    return completions


def coconut_generate(model: PreTrainedModel, prompts: Sequence[Sequence[int]], *, latent_token_id: int,
                     eos_token_id: int, max_new_tokens: int, **_) -> list[list[int]]:
    """(a') Coconut's released `generate`, one row at a time: cached thought passes, uncached answer tokens.

    Its forward runs the prefix before the first slot, then one position per
    pass against the cache, rebuilding the embeddings after each thought; its
    decoding loop calls the model on the whole embedded sequence for every
    token. (Coconut also applies the LM head to every position; this applies
    it to the last one only, which favours the baseline.)
    """
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    completions = []
    for prompt in prompts:
        embeds = embed(torch.tensor([prompt], device=device))
        cache = DynamicCache(config=model.config)
        start = 0
        for column in [i for i, token in enumerate(prompt) if token == latent_token_id]:
            hidden = model.base_model(inputs_embeds=embeds[:, start:column], **cache_argument(cache),
                                      use_cache=True).last_hidden_state
            embeds = torch.cat([embeds[:, :column], hidden[:, -1:], embeds[:, column + 1:]], dim=1)
            start = column
        hidden = model.base_model(inputs_embeds=embeds[:, start:], **cache_argument(cache), use_cache=True)
        tokens: list[int] = []
        hidden = hidden.last_hidden_state[:, -1]
        while True:
            token = _greedy_token(model, hidden)
            tokens.append(token.item())
            if _finished(tokens, eos_token_id, max_new_tokens):
                break
            embeds = torch.cat([embeds, embed(token)[:, None]], dim=1)
            hidden = model.base_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        completions.append(tokens)
    return completions


def hf_cache_loop(model: PreTrainedModel, prompts: Sequence[Sequence[int]], *, latent_token_id: int,
                  pad_token_id: int, eos_token_id: int, max_new_tokens: int) -> list[list[int]]:
    """(b) The whole batch, left-padded, through the model with a `DynamicCache`, one position per step.

    The prompt up to the first `<latent>` column is one call; every later
    prompt column is one step whose input is the previous step's hidden state
    in rows with a slot there and the token's embedding elsewhere; then greedy
    decoding, one step per token, rows stopping at EOS.
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
    embeds = model.get_input_embeddings()(input_ids)
    positions = position_ids_from_mask(attention_mask)
    slots = input_ids == latent_token_id
    first = int(slots.any(0).float().argmax()) if slots.any() else input_ids.shape[1] - 1
    cache = DynamicCache(config=model.config)
    hidden = model.base_model(inputs_embeds=embeds[:, :first], attention_mask=attention_mask[:, :first],
                              position_ids=positions[:, :first], **cache_argument(cache),
                              use_cache=True).last_hidden_state[:, -1:]
    for column in range(first, input_ids.shape[1]):
        inputs = torch.where(slots[:, column, None, None], hidden, embeds[:, column:column + 1])
        hidden = model.base_model(inputs_embeds=inputs, attention_mask=attention_mask[:, :column + 1],
                                  position_ids=positions[:, column:column + 1], **cache_argument(cache),
                                  use_cache=True).last_hidden_state
    position = positions[:, -1:]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    generated = []
    while True:
        token = torch.where(done, pad_token_id, _greedy_token(model, hidden[:, -1]))
        generated.append(token)
        done |= token == eos_token_id
        if len(generated) == max_new_tokens or done.all():
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        position = position + 1
        hidden = model.base_model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=position,
                                  **cache_argument(cache), use_cache=True).last_hidden_state
    return [cut_after_eos(row, eos_token_id) for row in torch.stack(generated, dim=1).tolist()]


def thoughtlab_rollout(model: PreTrainedModel, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                       **ids: int) -> list[list[int]]:
    """(c) `latent_rollout`: one cached position per thought, then Hugging Face `generate` from the cache."""
    return latent_rollout(model, prompts, config=SamplingConfig(max_new_tokens=max_new_tokens), **ids).completions


ROLLOUTS: dict[str, Callable[..., list[list[int]]]] = {
    "coconut loop (a)": coconut_loop,
    "coconut generate (a')": coconut_generate,
    "hf cache loop (b)": hf_cache_loop,
    "thoughtlab (c)": thoughtlab_rollout,
}
OURS = "thoughtlab (c)"
BATCHED = ("hf cache loop (b)", OURS)


def rollout_fn(setup: Setup, name: str, rows: Sequence[int] | None = None) -> Callable[[], list[list[int]]]:
    """A no-argument call of rollout provider `name` on the setup's prompts (or the given rows of them)."""
    prompts = setup.prompts if rows is None else [setup.prompts[row] for row in rows]
    fn = torch.no_grad()(ROLLOUTS[name])
    return partial(fn, setup.model, prompts, max_new_tokens=setup.workload.answer_tokens, **setup.ids)


def float32_twin(setup: Setup) -> Setup:
    """The setup itself in float32, else the same workload on a float32 copy of its model.

    The agreement checks run here: in bf16 a batched row and the same row alone
    round differently enough to flip greedy tokens, which says nothing about
    whether two providers run the same algorithm.
    """
    if setup.workload.dtype == torch.float32:
        return setup
    model = copy.deepcopy(setup.model).float()
    reasoner = Reasoner(model, setup.reasoner.tokenizer, "latent", latent=setup.reasoner.latent)
    return replace(setup, workload=replace(setup.workload, dtype=torch.float32), reasoner=reasoner)


def check_rollouts_agree(setup: Setup, rows: Sequence[int]) -> list[list[int]]:
    """Every provider writes the same greedy completions for `rows` as ours; returns them.

    Runs in float32 (`float32_twin`). Batched providers run the whole batch
    (so left padding is part of the check), batch-1 providers only `rows`, to
    keep the check cheap. Raises AssertionError naming the provider and row
    that differ, and when every checked row wrote the same completion (a check
    that could not fail).
    """
    setup = float32_twin(setup)
    ours = rollout_fn(setup, OURS)()
    expected = [ours[row] for row in rows]
    for name in ROLLOUTS:
        if name == OURS:
            continue
        if name in BATCHED:
            theirs = rollout_fn(setup, name)()
            got = [theirs[row] for row in rows]
        else:
            got = rollout_fn(setup, name, rows)()
        for row, mine, other in zip(rows, expected, got):
            assert mine == other, f"{name} wrote {other} for row {row}, {OURS} wrote {mine}"
    assert len({tuple(c) for c in expected}) > 1, f"every checked row wrote {expected[0]}: the check is vacuous"
    return expected


def check_rows(workload: Workload, count: int = 4) -> list[int]:
    """`count` rows spread over the batch, first and last included: the rows the batch-1 baselines are checked on."""
    count = min(count, workload.batch)
    return sorted({round(i * (workload.batch - 1) / max(count - 1, 1)) for i in range(count)})


# -- training step -------------------------------------------------------------------------------


def coconut_full_passes(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                        latent_token_id: int) -> torch.Tensor:
    """Last hidden states from k + 1 full-sequence passes: pass i fills every row's thought i from pass i's output."""
    embeds = model.get_input_embeddings()(input_ids)
    positions = position_ids_from_mask(attention_mask)
    slots = [row.nonzero().flatten().tolist() for row in (input_ids == latent_token_id) & attention_mask.bool()]

    def backbone(embeds: torch.Tensor) -> torch.Tensor:
        return model.base_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=positions).last_hidden_state

    for thought in range(max(map(len, slots))):
        hidden = backbone(embeds)
        rows = [row for row, columns in enumerate(slots) if len(columns) > thought]
        columns = [slots[row][thought] for row in rows]
        index = (torch.tensor(rows, device=input_ids.device), torch.tensor(columns, device=input_ids.device))
        embeds = embeds.index_put(index, hidden[index[0], index[1] - 1])  # out of place: gradients flow through
    return backbone(embeds)


TRAINING: dict[str, Callable[..., torch.Tensor]] = {
    "coconut full passes": coconut_full_passes,
    "thoughtlab": latent_forward,
}


def training_loss(setup: Setup, name: str) -> torch.Tensor:
    """The completion loss of the setup's batch, hidden states from training provider `name`."""
    batch, model = setup.batch, setup.model
    hidden = TRAINING[name](model, batch["input_ids"], batch["attention_mask"],
                            latent_token_id=setup.reasoner.latent_token_id)
    return hidden_states_loss(model, hidden, batch["labels"], batch["weights"])


def training_step_fn(setup: Setup, name: str) -> Callable[[], None]:
    """A no-argument forward + backward; gradients are dropped first so calls do not accumulate."""
    def step() -> None:
        setup.model.zero_grad(set_to_none=True)
        training_loss(setup, name).backward()
    return step


def check_training_agrees(setup: Setup, rows: int = 4, rtol: float = 1e-4) -> dict[str, float]:
    """Both training providers compute the same loss on the first `rows` rows of the batch, in float32; returns them."""
    setup = float32_twin(setup)
    setup = replace(setup, batch={key: value[:rows] for key, value in setup.batch.items()})
    with torch.no_grad():
        losses = {name: training_loss(setup, name).item() for name in TRAINING}
    ours, theirs = losses["thoughtlab"], losses["coconut full passes"]
    assert abs(ours - theirs) <= rtol * abs(theirs), f"the training providers' losses differ: {losses}"
    return losses


# -- timing --------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, device: str) -> dict[str, float]:
    """Median seconds per call, the calls taken in turn each round after one warm-up call each.

    Interleaving keeps slow drifts of a shared machine from landing on one provider only.
    """
    for fn in fns.values():
        fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def thought_rows_per_second(workload: Workload, seconds: float) -> float:
    return workload.batch * workload.thoughts / seconds


def rollout_table(workload: Workload, seconds: dict[str, float]) -> list[str]:
    """Markdown rows: each measured rollout provider's time, throughput and how much faster ours is."""
    lines = ["| rollout | s per batch | thoughts·rows/s | thoughtlab (c) speedup over it |", "|---|---|---|---|"]
    for name, s in seconds.items():
        speedup = f"{s / seconds[OURS]:.2f}x" if OURS in seconds else "-"
        lines.append(f"| {name} | {s:.3f} | {thought_rows_per_second(workload, s):.1f} | {speedup} |")
    return lines


def training_table(seconds: dict[str, float]) -> list[str]:
    """Markdown rows: each measured training provider's forward + backward time and how much faster ours is."""
    lines = ["| training step (fwd+bwd) | s | thoughtlab speedup over it |", "|---|---|---|"]
    for name, s in seconds.items():
        speedup = f"{s / seconds['thoughtlab']:.2f}x" if "thoughtlab" in seconds else "-"
        lines.append(f"| {name} | {s:.3f} | {speedup} |")
    return lines
