"""Model factory, local checkpoints, the Reasoner's format/parse and batched generation."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from framework.data.sample import Example, Role
from framework.models import (
    FAMILIES,
    FORMATS,
    Reasoner,
    backbone_hidden_states,
    build_model,
    count_parameters,
    load_pretrained,
    load_tokenizer,
    tiny_config,
)
from framework.models.backbone import backbone, distinct_rows, position_ids_from_mask, prompt_pass, repeated_rows
from framework.rollout import SamplingConfig, generate, sample


@pytest.mark.parametrize("family", FAMILIES)
def test_factory_sizes_are_about_right(family, word_tokenizer):
    small = count_parameters(build_model(family, "1m", word_tokenizer))
    assert 0.5e6 < small < 1.5e6
    config = build_model(family, "20m", word_tokenizer).config
    assert config.vocab_size == len(word_tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_hidden_states_from_ids_embeddings_or_a_growing_cache_agree(family, word_tokenizer):
    model = build_model(family, "1m", word_tokenizer, seed=0).eval()
    torch.manual_seed(0)
    ids = torch.randint(4, len(word_tokenizer), (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    positions = position_ids_from_mask(mask)
    real = mask.bool()
    with torch.no_grad():
        full = backbone_hidden_states(model, ids, mask, position_ids=positions)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        torch.testing.assert_close(model.get_output_embeddings()(full)[real], logits[real])
        embeds = model.get_input_embeddings()(ids)
        from_embeds = backbone_hidden_states(model, attention_mask=mask, inputs_embeds=embeds, position_ids=positions)
        torch.testing.assert_close(from_embeds[real], full[real])
        cache = DynamicCache(config=model.config)
        head = backbone_hidden_states(model, ids[:, :5], mask[:, :5], position_ids=positions[:, :5], cache=cache)
        tail = backbone_hidden_states(model, ids[:, 5:], mask, position_ids=positions[:, 5:], cache=cache)
    assert cache.get_seq_length() == 9
    torch.testing.assert_close(torch.cat([head, tail], 1)[real], full[real])
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        backbone_hidden_states(model, ids, mask, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        backbone_hidden_states(model, attention_mask=mask)


def test_distinct_rows_keep_first_occurrences_in_order():
    ids = torch.tensor([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]])
    first, of = distinct_rows(ids)
    assert first.tolist() == [0, 1, 3] and of.tolist() == [0, 1, 0, 2, 1]
    first, of = distinct_rows(ids, torch.tensor([0, 0, 1, 0, 0]))  # rows differ if any tensor tells them apart
    assert first.tolist() == [0, 1, 2, 3] and of.tolist() == [0, 1, 2, 3, 1]
    first, of = distinct_rows(torch.tensor([[9], [7], [8]]))  # nothing repeated: the batch's own order
    assert first.tolist() == of.tolist() == [0, 1, 2]
    first, of = distinct_rows(torch.zeros(0, 4, dtype=torch.long))
    assert first.tolist() == of.tolist() == []


def test_rows_are_shared_only_where_the_pass_is_deterministic(word_tokenizer):
    """Under active dropout each row draws its own mask, so repeated rows are not shared in training then."""
    ids, mask = torch.tensor([[5, 6], [5, 6]]), torch.ones(2, 2, dtype=torch.long)
    without = build_model("llama", "1m", word_tokenizer, seed=0).train()
    assert repeated_rows(without, ids, mask) is not None
    config = tiny_config("gpt2", "1m", vocab_size=len(word_tokenizer), tokenizer=word_tokenizer)
    config.resid_pdrop = 0.1
    with_dropout = AutoModelForCausalLM.from_config(config)
    assert repeated_rows(with_dropout.train(), ids, mask) is None
    assert repeated_rows(with_dropout.eval(), ids, mask) is not None
    assert repeated_rows(without, ids[:1], mask[:1]) is None  # nothing repeated


def test_a_shared_prompt_pass_has_each_rows_states_and_gradient(word_tokenizer):
    """Rows that repeat a prompt share one pass (`prompt_pass`); its hidden states, its cache and the gradient of a
    loss on a continuation after that cache are those of every row run on its own (float64)."""
    # GPT-2, because its float64 is float64 throughout: Llama's RMSNorm rounds through float32 (transformers 5.24),
    # which turns the two batch shapes' last-bit differences into float32-sized ones.
    model = build_model("gpt2", "1m", word_tokenizer, seed=0).double().eval()
    torch.manual_seed(0)
    distinct = torch.randint(4, len(word_tokenizer), (3, 7))
    mask = torch.ones_like(distinct)
    mask[1, :4] = 0
    mask[2, :6] = 0  # one real token: its pass is all padding but the last column
    rows = [0, 2, 1, 0, 2, 0]
    ids, mask = distinct[rows], mask[rows]
    continuation = torch.randint(4, len(word_tokenizer), (len(rows), 3))
    full_mask = torch.cat([mask, torch.ones_like(continuation)], dim=1)
    positions = position_ids_from_mask(full_mask)[:, ids.shape[1]:]
    parameters = [p for p in model.parameters() if p.requires_grad]

    def run(shared: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if shared:
            hidden, cache = prompt_pass(model, ids, mask)
        else:
            cache = DynamicCache(config=model.config)
            hidden = backbone_hidden_states(model, ids, mask, position_ids=position_ids_from_mask(mask), cache=cache)
        after = backbone_hidden_states(model, continuation, full_mask, position_ids=positions, cache=cache)
        states = torch.cat([hidden[mask.bool()], after.flatten(0, 1)])
        loss = (after.sin() * torch.arange(1.0, len(rows) + 1, dtype=after.dtype)[:, None, None]).sum()
        return states, torch.autograd.grad(loss, parameters, allow_unused=True)

    batch_sizes: list[int] = []
    hook = backbone(model).register_forward_hook(
        lambda module, args, kwargs, out: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        shared_states, shared_grads = run(shared=True)
    finally:
        hook.remove()
    assert batch_sizes == [3, len(rows)]  # the prompts once each, then every row's continuation
    own_states, own_grads = run(shared=False)
    torch.testing.assert_close(shared_states, own_states)
    for shared_grad, own_grad in zip(shared_grads, own_grads):
        assert (shared_grad is None) == (own_grad is None)
        if own_grad is not None:
            torch.testing.assert_close(shared_grad, own_grad)


def test_factory_rejects_unknown_family_and_size(word_tokenizer):
    with pytest.raises(ValueError, match="family 'mamba'"):
        build_model("mamba", "1m", word_tokenizer)
    with pytest.raises(ValueError, match="size '3b'"):
        build_model("llama", "3b", word_tokenizer)


@pytest.mark.parametrize("mode", FORMATS)
def test_format_then_parse_round_trips(mode, word_tokenizer, addition_task):
    options = {"pause_tokens": 3} if mode == "pause" else {}
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, mode, **options)
    for seed in range(10):
        example = addition_task.generate(random.Random(seed))
        sample = reasoner.tokenize(example)
        prompt_length = len(reasoner.prompt_ids(example))
        assert sample.input_ids[:prompt_length] == reasoner.prompt_ids(example)
        generation = reasoner.parse(sample.input_ids[prompt_length:])
        assert generation.answer == example.answer
        assert generation.trace == (example.trace if mode in ("cot", "hybrid") else "")
        assert generation.finished
        assert generation.num_tokens == len(sample.input_ids) - prompt_length
        if mode == "pause":
            assert sample.roles.count(Role.LATENT) == 3


def test_parse_of_an_unfinished_trace_has_no_answer(word_tokenizer):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "cot")
    ids = word_tokenizer("1 + 2 = 3 ;", add_special_tokens=False).input_ids
    generation = reasoner.parse(ids)
    assert (generation.trace, generation.answer, generation.finished) == ("1 + 2 = 3 ;", "", False)


def test_reasoner_requires_its_special_tokens(word_tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>")),
        eos_token="<eos>", unk_token="<unk>",
    )
    with pytest.raises(ValueError, match=r"lacks .*'<think>'.*add_reasoning_tokens"):
        Reasoner(build_model("gpt2", "1m", word_tokenizer), bare, "cot")
    with pytest.raises(ValueError, match="unknown reasoning mode 'latentish'"):
        Reasoner(build_model("gpt2", "1m", word_tokenizer), word_tokenizer, "latentish")


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_equals_one_row_at_a_time(family, word_tokenizer, addition_task):
    torch.manual_seed(0)
    model = build_model(family, "1m", word_tokenizer)
    with torch.no_grad():  # a default-initialised model repeats one token; make it prompt-dependent
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.5)
    reasoner = Reasoner(model, word_tokenizer, "cot")
    rng = random.Random(1)
    examples = [addition_task.generate(rng) for _ in range(5)]
    examples.append(Example("1 + 1 + 1 + 1 + 1 + 1 + 1", "", "7"))  # a longer prompt forces left padding
    prompts = [reasoner.prompt_ids(example) for example in examples]
    config = SamplingConfig(max_new_tokens=12)
    ids = dict(pad_token_id=word_tokenizer.pad_token_id, eos_token_id=word_tokenizer.eos_token_id, config=config)
    batched = sample(model, prompts, **ids)
    alone = [sample(model, [prompt], **ids)[0] for prompt in prompts]
    assert batched == alone
    assert len({tuple(row) for row in batched}) > 1
    assert generate(reasoner, examples, config) == [reasoner.parse(row) for row in batched]


def test_sampling_is_seeded_and_differs_from_greedy(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("qwen3", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    examples = [addition_task.generate(random.Random(s)) for s in range(4)]
    config = SamplingConfig(max_new_tokens=10, do_sample=True, temperature=1.5)
    torch.manual_seed(7)
    first = generate(reasoner, examples, config)
    torch.manual_seed(7)
    assert generate(reasoner, examples, config) == first
    assert first != generate(reasoner, examples, SamplingConfig(max_new_tokens=10))


def test_checkpoint_round_trip_through_from_pretrained(tmp_path, word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    reasoner.save_pretrained(tmp_path / "ckpt")
    model, tokenizer = load_pretrained(tmp_path / "ckpt")
    assert isinstance(model, type(reasoner.model))
    ids = torch.tensor([reasoner.prompt_ids(addition_task.generate(random.Random(0)))])
    torch.testing.assert_close(model(ids).logits, reasoner.model(ids).logits)
    again = Reasoner.from_pretrained(tmp_path / "ckpt", "pause")
    assert again.mode == "pause" and len(again.tokenizer) == len(word_tokenizer)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt"), type(reasoner.model))


def test_load_pretrained_errors_name_the_problem(tmp_path, word_tokenizer):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)
    build_model("gpt2", "1m", word_tokenizer).save_pretrained(tmp_path / "no_tokenizer")
    for load in (load_pretrained, load_tokenizer):
        with pytest.raises(FileNotFoundError, match="has no tokenizer"):
            load(tmp_path / "no_tokenizer")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_tokenizer(tmp_path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, word_tokenizer, monkeypatch):
    reasoner = Reasoner(build_model("gpt2", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    reasoner.save_pretrained(tmp_path / "ckpt")
    before = json.loads((tmp_path / "ckpt" / "config.json").read_text())

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reasoner.tokenizer, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        reasoner.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text()) == before
    load_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
