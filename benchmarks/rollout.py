"""Token rollouts: thoughtlab's decode loop against Hugging Face `generate` and a plain `DynamicCache` loop.

One model and one batch of prompts for every provider: a randomly initialised
Llama "20m" with its word vocabulary padded to 32,000, 32 left-padded prompts
of 12-30 tokens, 32 new tokens at most. Providers:

- `hf generate`: `model.generate` with the prompts' attention mask, as
  `framework.rollout` decoded before issue 16;
- `cache loop`: the loop a researcher writes by hand: one cached position per
  step for the whole batch, `torch.multinomial` to sample, until every row
  has written EOS;
- `thoughtlab`: `framework.rollout.sampling.sample` (finished rows leave the
  batch; inverse-CDF draws);
- with `--compiled`, also `hf generate, compiled`: `generate` with a static
  cache and its forward compiled by `torch.compile` (the issue's first
  candidate; transformers compiles on the CPU only when told to, and the
  warm-up call pays the compilation).

Workloads:

- `greedy`: argmax decoding of a model that never writes EOS (every row runs
  to the limit: the loop's worst case, no row ever leaves);
- `sampled`: temperature 1, no EOS either;
- `sampled, ragged`: temperature 1 with EOS made likely (a bias on its logit
  gives it probability 1/16 per step), so rows stop at different lengths, as
  in GRPO's rollouts and in the evaluation of a trained model.

Before timing, the greedy workload checks that the providers write the same
tokens. Time: median of `--rounds` calls per provider, the providers
interleaved round by round after a warm-up call each. Throughput: each
provider's own generated tokens over all its measured calls, divided by their
total time (sampled completions differ between providers and calls).

    OMP_NUM_THREADS=1 python -m benchmarks.rollout --rounds 3
    OMP_NUM_THREADS=1 python -m benchmarks.rollout --rounds 3 --compiled
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CompileConfig, DynamicCache, PreTrainedModel

from benchmarks.common import padded_word_tokenizer
from framework.data.collate import left_pad
from framework.data.tasks import AdditionChain
from framework.models import build_model
from framework.models.backbone import cache_argument, position_ids_from_mask
from framework.rollout.sampling import SamplingConfig, cut_after_eos, sample

PROVIDERS = ("hf generate", "cache loop", "thoughtlab")
COMPILED = "hf generate, compiled"


@dataclass(frozen=True)
class Workload:
    name: str
    do_sample: bool
    mean_length: float = math.inf  # sampled rows stop after this many tokens on average (EOS biased); inf: never


WORKLOADS = (Workload("greedy", False), Workload("sampled", True), Workload("sampled, ragged", True, 16.0))


@dataclass(frozen=True)
class Setup:
    model: PreTrainedModel
    prompts: list[list[int]]
    pad_token_id: int
    eos_token_id: int


def build_setup(size: str = "20m", vocab: int = 32000, batch: int = 32, seed: int = 0) -> Setup:
    task = AdditionChain(n_terms=3, max_operand=9)
    tokenizer = padded_word_tokenizer(task.vocabulary(), vocab)
    model = build_model("llama", size, tokenizer, seed=seed).eval()
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, 31, (batch,), generator=generator).tolist()
    prompts = [torch.randint(10, len(tokenizer), (n,), generator=generator).tolist() for n in lengths]
    return Setup(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id)


@torch.no_grad()
def with_eos_bias(setup: Setup, mean_length: float) -> Setup:
    """A copy of the model whose EOS has probability about 1 / `mean_length` per sampled step: a bias on its
    logit, set from the other logits' log-sum-exp at the prompts' last position."""
    head = setup.model.get_output_embeddings()
    input_ids, attention_mask = left_pad(setup.prompts, setup.pad_token_id, "cpu")
    logits = setup.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1).logits[:, -1]
    others = torch.cat([logits[:, :setup.eos_token_id], logits[:, setup.eos_token_id + 1:]], -1)
    p = 1 / mean_length
    biased = nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    biased.bias.zero_()
    biased.bias[setup.eos_token_id] = others.logsumexp(-1).mean() - logits[:, setup.eos_token_id].mean() + math.log(p / (1 - p))
    model = type(setup.model)(setup.model.config).eval()
    model.load_state_dict(setup.model.state_dict())
    model.set_output_embeddings(biased)
    return Setup(model, setup.prompts, setup.pad_token_id, setup.eos_token_id)


def never_ending(setup: Setup) -> Setup:
    """The same setup with an EOS id past the vocabulary: no row ever stops early."""
    return Setup(setup.model, setup.prompts, setup.pad_token_id, setup.model.config.vocab_size)


def for_workload(setup: Setup, workload: Workload) -> Setup:
    """`setup` as `workload` runs it: EOS never written, or made likely enough to stop rows at its mean length."""
    return never_ending(setup) if math.isinf(workload.mean_length) else with_eos_bias(setup, workload.mean_length)


# -- providers -----------------------------------------------------------------------------------


@torch.no_grad()
def hf_generate(setup: Setup, config: SamplingConfig, **options) -> list[list[int]]:
    input_ids, attention_mask = left_pad(setup.prompts, setup.pad_token_id, "cpu")
    output = setup.model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=config.max_new_tokens,
        do_sample=config.do_sample, temperature=1.0 if config.do_sample else None, top_k=0 if config.do_sample else None,
        top_p=1.0 if config.do_sample else None, pad_token_id=setup.pad_token_id, eos_token_id=setup.eos_token_id,
        **options,
    )
    return [cut_after_eos(row, setup.eos_token_id) for row in output[:, input_ids.shape[1]:].tolist()]


@torch.no_grad()
def hf_generate_compiled(setup: Setup, config: SamplingConfig) -> list[list[int]]:
    compile_config = CompileConfig(mode="default", dynamic=False)
    compile_config._compile_all_devices = True  # transformers' switch for compiling off CUDA
    return hf_generate(setup, config, cache_implementation="static", compile_config=compile_config)


@torch.no_grad()
def cache_loop(setup: Setup, config: SamplingConfig) -> list[list[int]]:
    """The whole batch every step, one cached position at a time, until every row has written EOS."""
    model, eos = setup.model, setup.eos_token_id
    input_ids, attention_mask = left_pad(setup.prompts, setup.pad_token_id, "cpu")
    positions = position_ids_from_mask(attention_mask)
    cache = DynamicCache(config=model.config)
    step_ids, step_positions = input_ids, positions
    done = torch.zeros(len(setup.prompts), dtype=torch.bool)
    generated = []
    for _ in range(config.max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
                       **cache_argument(cache), use_cache=True, logits_to_keep=1).logits[:, -1].float()
        token = torch.multinomial(logits.softmax(-1), 1)[:, 0] if config.do_sample else logits.argmax(-1)
        token = torch.where(done, setup.pad_token_id, token)
        generated.append(token)
        done |= token == eos
        if done.all():
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(done), 1)], 1)
        step_ids, step_positions = token[:, None], step_positions[:, -1:] + 1
    return [cut_after_eos(row, eos) for row in torch.stack(generated, 1).tolist()]


def thoughtlab(setup: Setup, config: SamplingConfig) -> list[list[int]]:
    return sample(setup.model, setup.prompts, pad_token_id=setup.pad_token_id, eos_token_id=setup.eos_token_id,
                  config=config)


RUNNERS: dict[str, Callable[[Setup, SamplingConfig], list[list[int]]]] = {
    "hf generate": hf_generate, "cache loop": cache_loop, "thoughtlab": thoughtlab, COMPILED: hf_generate_compiled}


# -- the report ----------------------------------------------------------------------------------


def check_greedy_agreement(setup: Setup, config: SamplingConfig, providers: Sequence[str] = PROVIDERS) -> int:
    """Rows on which every provider writes the same greedy tokens (of the batch)."""
    outputs = [RUNNERS[name](setup, config) for name in providers]
    return sum(all(rows[i] == outputs[0][i] for rows in outputs) for i in range(len(setup.prompts)))


def measure(
    setup: Setup, workload: Workload, max_new_tokens: int, rounds: int, providers: Sequence[str] = PROVIDERS
) -> dict[str, tuple[float, float]]:
    """Per provider: median seconds per batch, and generated tokens per second over all its measured calls (its
    own tokens: sampled completions differ between providers and calls)."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=workload.do_sample)
    setup = for_workload(setup, workload)
    for name in providers:  # warm-up
        RUNNERS[name](setup, config)
    seconds: dict[str, list[float]] = {name: [] for name in providers}
    tokens = dict.fromkeys(providers, 0)
    for _ in range(rounds):
        for name in providers:
            start = time.perf_counter()
            tokens[name] += sum(map(len, RUNNERS[name](setup, config)))
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(seconds[name]), tokens[name] / sum(seconds[name])) for name in providers}


def table(workload: Workload, results: dict[str, tuple[float, float]]) -> list[str]:
    base = {name: results[name][1] for name in ("hf generate", "cache loop")}
    lines = [f"{workload.name}:", "| provider | s per batch | tokens/s | x hf generate | x cache loop |",
             "|---|---|---|---|---|"]
    for name, (seconds, rate) in results.items():
        lines.append(f"| {name} | {seconds:.3f} | {rate:.0f} | {rate / base['hf generate']:.2f} | "
                     f"{rate / base['cache loop']:.2f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="20m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--compiled", action="store_true", help=f"add {COMPILED!r} (its warm-up call compiles)")
    ns = parser.parse_args(argv)
    providers = (*PROVIDERS, COMPILED) if ns.compiled else PROVIDERS
    setup = build_setup(ns.size, batch=ns.batch)
    agree = check_greedy_agreement(never_ending(setup), SamplingConfig(max_new_tokens=ns.max_new_tokens), providers)
    print(f"llama {ns.size}, batch {ns.batch}, {ns.max_new_tokens} new tokens at most; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {ns.rounds} interleaved rounds; greedy tokens equal on "
          f"{agree}/{ns.batch} rows")
    for workload in WORKLOADS:
        print("\n".join(table(workload, measure(setup, workload, ns.max_new_tokens, ns.rounds, providers))))


if __name__ == "__main__":
    main()
