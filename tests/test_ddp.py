"""SFT, LatentSFT, DPO and GRPO under `Trainer(strategy="ddp", devices=2)` take the step one process takes.

What is compared: one optimizer step on a training set of 4 items, which is
one global batch (`tests/ddp_run.py`), in float64, (a) under DDP on two CPU
ranks (gloo), each holding the 2 items Lightning's DistributedSampler gives it,
and (b) in one process holding all 4. The gradients the optimizer would apply
(DDP's all-reduced mean), on every rank, and the mean of the ranks' losses
must equal one process's.

Why that can hold: DDP averages gradients over ranks, so the step matches
when each rank's loss is its share of the global loss times W:

- SFT and LatentSFT take the mean over the rank's tokens: equal only when the
  ranks hold equally many trained tokens, so every problem here tokenizes to
  the same length (asserted below);
- DPO takes the mean over pairs: equal pair counts per rank suffice;
- GRPO, on fixed teacher-forced completions (sampling differs per rank) whose
  lengths make the ranks' token counts unequal however the prompts are split
  (asserted below):
  `grpo` (mean over sequences of per-sequence means) and `dr_grpo` (sum over
  sequences x max_new_tokens) hold with equal sequence counts whatever the
  lengths; `dapo` (sum over all tokens / the token count) holds only because
  each rank divides by the global count / W, as TRL does (the test fails
  when a rank divides by its own count).

Tolerance: float64 has unit roundoff u = 2^-53 ~ 1.1e-16. The two sides differ
only in summation order (per-rank partial sums, then a mean over ranks), which
perturbs a sum of n terms by at most ~n*u relative to the sum of magnitudes;
with n ~ 1e3 terms per gradient entry and O(1) condition numbers that is ~1e-13.
A normalisation error (a token count off by the ratio of the ranks' counts) is
O(1). TOL = 1e-10 sits between, with no hand tuning.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_run.py")
ROOT = SCRIPT.parents[1]
TOL = 1e-10  # relative, from float64 roundoff: see the module docstring
# Lightning 2.6.6's own CombinedLoader calls what torch 2.13 deprecated; every Trainer.fit of the suite hits it.
pytestmark = pytest.mark.filterwarnings("ignore:.isinstance.treespec, LeafSpec.. is deprecated:FutureWarning")
CASES = ("sft", "latent_sft", "dpo", "grpo-dapo", "grpo-grpo", "grpo-dr_grpo")


def _load_script():
    spec = importlib.util.spec_from_file_location("ddp_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ddp_run = _load_script()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict[str, dict]]:
    """Every case under DDP, in one pair of rank processes (started as torchrun would: Lightning joins them);
    one `{case: {"loss", "grads"}}` per rank."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "NODE_RANK": "0", "PYTHONPATH": str(ROOT)}
    ranks = [
        subprocess.Popen([sys.executable, str(SCRIPT), str(out), *CASES], env={**env, "LOCAL_RANK": str(rank)},
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(ddp_run.WORLD_SIZE)
    ]
    logs = []
    try:
        for rank in ranks:
            logs.append(rank.communicate(timeout=600)[0])  # a hang guard, not a timing assertion
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    for index, (rank, log) in enumerate(zip(ranks, logs)):
        assert rank.returncode == 0, f"rank {index} failed:\n{log[-4000:]}"
    return [torch.load(out / f"rank{rank}.pt") for rank in range(ddp_run.WORLD_SIZE)]


def _close(a: float, b: float) -> bool:
    # Losses here are O(1) (cross-entropy ~ log V, normalised advantages ~ 1): 1 is the scale that a loss
    # which cancels to ~0 (GRPO's `grpo` on teacher-forced completions) is measured against.
    return abs(a - b) <= TOL * max(abs(a), abs(b), 1.0)


def test_every_problem_has_the_same_length_so_ranks_hold_equal_token_counts():
    """The precondition of the SFT and LatentSFT comparisons (per-rank token means)."""
    for mode, options in (("cot", {}), ("latent", {"latent": ddp_run.LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ")})):
        reasoner = ddp_run.Reasoner(ddp_run._model(), ddp_run.TOKENIZER, mode, **options)
        lengths = {len(reasoner.tokenize(example).input_ids) for example in ddp_run.EXAMPLES}
        assert len(lengths) == 1, f"{mode}: lengths {lengths}"


@pytest.mark.parametrize("case", CASES)
def test_a_ddp_step_matches_one_process_on_the_same_global_batch(case, ddp_results):
    ranks = [results[case] for results in ddp_results]
    reference = ddp_run.one_step(case, devices=1)

    losses = [rank["loss"] for rank in ranks]
    assert _close(sum(losses) / len(losses), reference["loss"]), f"{case}: rank losses {losses}, one process {reference['loss']}"

    names = sorted(reference["grads"])
    expected = torch.cat([reference["grads"][name].flatten() for name in names])
    assert expected.dtype == torch.float64 and expected.norm() > 0
    for index, rank in enumerate(ranks):  # every replica applies the same, all-reduced, gradient
        assert rank["grads"].keys() == reference["grads"].keys()
        got = torch.cat([rank["grads"][name].flatten() for name in names])
        error = ((got - expected).norm() / expected.norm()).item()
        assert error <= TOL, f"{case}, rank {index}: gradients differ from one process's by {error:.3g} (relative norm)"


def test_grpo_ranks_hold_unequal_token_counts_however_the_prompts_are_split():
    """What lets the dapo case fail: with unequal counts, a rank's own count is not the global count / W."""
    policy = ddp_run.FixedCompletions(ddp_run.Reasoner(ddp_run._model(), ddp_run.TOKENIZER, "cot"), ddp_run.EXAMPLES)
    per_prompt = [sum(map(len, completions)) for completions in policy.table.values()]
    assert len(per_prompt) == ddp_run.GLOBAL_BATCH
    for rank0 in itertools.combinations(range(ddp_run.GLOBAL_BATCH), ddp_run.GLOBAL_BATCH // ddp_run.WORLD_SIZE):
        tokens = sum(per_prompt[k] for k in rank0)
        assert tokens != sum(per_prompt) - tokens, rank0
