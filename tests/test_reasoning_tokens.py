"""New reasoning tokens start distinct: from their own sub-word pieces, never as copies of one another or of EOS."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from framework.data.datamodule import ReasoningDataModule
from framework.data.tokenizer import BOS, EOS, PAD, REASONING_TOKENS, THINK_END, THINK_START, UNK, add_reasoning_tokens
from framework.models import Reasoner, build_model
from framework.regimes import SFT, OptimizerConfig
from framework.rollout.sampling import SamplingConfig, sample


def _bpe_without_reasoning_tokens(addition_task) -> PreTrainedTokenizerFast:
    """A byte-level BPE as real checkpoints have, trained on the task's text, that lacks the reasoning tokens."""
    rng = random.Random(0)
    corpus = [f"{e.prompt} {e.trace} {e.answer}" for e in (addition_task.generate(rng) for _ in range(200))]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus + ["think before you answer, then stop thinking"] * 20, trainers.BpeTrainer(
        vocab_size=320, special_tokens=[PAD, BOS, EOS, UNK], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, clean_up_tokenization_spaces=False)


def _word_without_reasoning_tokens() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate([PAD, EOS, UNK, "1", "2", "+", "="])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, unk_token=UNK, pad_token=PAD)


def _untie(model: PreTrainedModel) -> None:
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))


def _min_distance_over_norm(matrix: torch.Tensor, ids: list[int]) -> float:
    rows = matrix[ids].double()
    distances = torch.cdist(rows, rows)[~torch.eye(len(ids), dtype=torch.bool)]
    return (distances.min() / rows.norm(dim=1).mean()).item()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_no_two_reasoning_tokens_start_equal_or_as_eos(kind, tied, addition_task):
    tokenizer = _bpe_without_reasoning_tokens(addition_task) if kind == "bpe" else _word_without_reasoning_tokens()
    model = build_model("llama", "1m", tokenizer, seed=0)
    if not tied:
        _untie(model)
    assert add_reasoning_tokens(tokenizer, model) == list(REASONING_TOKENS)
    ids = tokenizer.convert_tokens_to_ids([*REASONING_TOKENS, EOS])
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        # Copies would differ by float32 rounding (~1e-7 of a row's norm); distinct starts differ by a sizeable
        # fraction of it (a mean of 3 pieces that differ in one random row moves by about half a row norm).
        assert _min_distance_over_norm(matrix, ids) > 1e-2


def test_a_token_starts_from_the_mean_of_its_pieces_and_a_complete_tokenizer_changes_nothing(addition_task):
    tokenizer = _bpe_without_reasoning_tokens(addition_task)
    pieces = tokenizer(THINK_END, add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1 and sorted(pieces) != sorted(tokenizer(THINK_START, add_special_tokens=False)["input_ids"])
    model = build_model("llama", "1m", tokenizer, seed=0)
    _untie(model)
    add_reasoning_tokens(tokenizer, model)
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        torch.testing.assert_close(matrix[tokenizer.convert_tokens_to_ids(THINK_END)], matrix[pieces].mean(0))
    before = {name: p.clone() for name, p in model.named_parameters()}
    assert add_reasoning_tokens(tokenizer, model) == []
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_word_level_tokens_sample_the_same_rows_every_time():
    rows = []
    for _ in range(2):
        tokenizer = _word_without_reasoning_tokens()
        model = build_model("gpt2", "1m", tokenizer, seed=0)
        add_reasoning_tokens(tokenizer, model)
        rows.append(model.get_input_embeddings().weight[-len(REASONING_TOKENS):].clone())
    assert torch.equal(rows[0], rows[1])


@pytest.mark.slow
def test_sft_on_a_tied_model_closes_its_traces(addition_task):
    """The starts train: a tied model from scratch learns to close its trace and stop. (From scratch the old
    EOS copies train too, measured at 80 steps; what they break is a pretrained model's first steps, which the
    distinctness tests above guard.)"""
    L.seed_everything(0)
    tokenizer = _bpe_without_reasoning_tokens(addition_task)
    model = build_model("llama", "1m", tokenizer, seed=0)
    add_reasoning_tokens(tokenizer, model)
    reasoner = Reasoner(model, tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id,
                                         n_train=256, n_val=16, batch_size=32)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5))
    L.Trainer(max_steps=80, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, data)
    model.eval()
    prompts = [reasoner.prompt_ids(addition_task.generate(random.Random(1000 + i))) for i in range(16)]
    completions = sample(model, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         config=SamplingConfig(max_new_tokens=40))
    think_end = tokenizer.convert_tokens_to_ids(THINK_END)
    closed = [think_end in ids and ids[-1] == tokenizer.eos_token_id for ids in completions]
    assert all(closed), [tokenizer.decode(ids) for ids in completions]
