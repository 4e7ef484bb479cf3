"""Roles, tokenization and mask strategies."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from framework.data.datamodule import ReasoningDataModule
from framework.data.masks import IGNORE_INDEX, mask_strategy
from framework.data.sample import Example, Role, Segment
from framework.data.tokenize import tokenize_segments
from framework.data.tokenizer import REASONING_TOKENS, add_reasoning_tokens, missing_tokens

SEGMENTS = [
    Segment(Role.PROMPT, "Question: what is 12 plus 35?<think>"),
    Segment(Role.TRACE, "Add the tens, then the units: 47.</think>"),
    Segment(Role.ANSWER, "The answer is 47."),
]


def _runs(roles: list[int]) -> list[int]:
    """The role of each maximal run of equal roles."""
    return [role for index, role in enumerate(roles) if index == 0 or roles[index - 1] != role]


@pytest.mark.parametrize("tokenizer_name", ["word_tokenizer", "bpe_tokenizer"])
def test_each_segment_decodes_to_its_own_text(tokenizer_name, request, addition_task):
    tokenizer = request.getfixturevalue(tokenizer_name)
    rng = random.Random(0)
    examples = [addition_task.generate(rng) for _ in range(20)]
    texts = [[Segment(Role.PROMPT, e.prompt + "<think>"), Segment(Role.TRACE, e.trace + "</think>"), Segment(Role.ANSWER, e.answer)] for e in examples]
    if tokenizer_name == "bpe_tokenizer":
        texts.append(SEGMENTS)
    for segments in texts:
        sample = tokenize_segments(tokenizer, segments)
        roles = torch.tensor(sample.roles)
        ids = torch.tensor(sample.input_ids)
        assert sample.input_ids[-1] == tokenizer.eos_token_id
        assert _runs(sample.roles) == [int(s.role) for s in segments]
        for segment in segments:
            segment_ids = ids[roles == segment.role].tolist()
            if segment.role == segments[-1].role:
                segment_ids = segment_ids[:-1]  # the closing EOS
            if segment is segments[0] and tokenizer.bos_token_id is not None and tokenizer(segment.text).input_ids[0] == tokenizer.bos_token_id:
                segment_ids = segment_ids[1:]
            decoded = tokenizer.decode(segment_ids, skip_special_tokens=False)
            if tokenizer_name == "bpe_tokenizer":
                assert decoded == segment.text  # byte-level BPE is lossless
            else:
                assert decoded.split() == tokenizer.convert_ids_to_tokens(tokenizer(segment.text, add_special_tokens=False).input_ids)


def test_bpe_merges_cannot_cross_a_segment_boundary(bpe_tokenizer):
    # " plus" is one BPE token in the trained vocabulary; split mid-word by a segment
    # boundary, the two halves must land in their own roles rather than merge.
    segments = [Segment(Role.PROMPT, "12 pl"), Segment(Role.ANSWER, "us 35")]
    sample = tokenize_segments(bpe_tokenizer, segments, add_eos=False)
    prompt_ids = [i for i, r in zip(sample.input_ids, sample.roles) if r == Role.PROMPT]
    answer_ids = [i for i, r in zip(sample.input_ids, sample.roles) if r == Role.ANSWER]
    assert bpe_tokenizer.decode(prompt_ids) == "12 pl"
    assert bpe_tokenizer.decode(answer_ids) == "us 35"
    whole = bpe_tokenizer("12 plus 35", add_special_tokens=False).input_ids
    assert len(whole) < len(sample.input_ids)  # the whole text does merge across it


def test_word_tokenizer_round_trips_through_auto_tokenizer(word_tokenizer, tmp_path, addition_task):
    word_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    example = addition_task.generate(random.Random(3))
    text = example.prompt + "<think>" + example.trace + "</think>" + example.answer
    assert loaded(text).input_ids == word_tokenizer(text).input_ids
    assert missing_tokens(loaded, REASONING_TOKENS) == []
    assert loaded.decode(loaded(text).input_ids, skip_special_tokens=True).split() == (
        f"{example.prompt} {example.trace} {example.answer}".split()
    )


def test_add_reasoning_tokens_grows_a_tokenizer_and_model():
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=3, n_embd=16, n_layer=1, n_head=2))
    assert missing_tokens(tokenizer, REASONING_TOKENS) == list(REASONING_TOKENS)
    assert add_reasoning_tokens(tokenizer, model) == list(REASONING_TOKENS)
    assert missing_tokens(tokenizer, REASONING_TOKENS) == []
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 3 + len(REASONING_TOKENS)
    assert add_reasoning_tokens(tokenizer, model) == []


def test_a_data_module_tokenizes_with_any_function(word_tokenizer, addition_task):
    """No Reasoner needed: a plain function of an example (here, prompt then answer) and a pad id."""

    def tokenize(example: Example):
        return tokenize_segments(word_tokenizer, [Segment(Role.PROMPT, example.prompt), Segment(Role.ANSWER, example.answer)])

    data = ReasoningDataModule.from_task(addition_task, tokenize, pad_token_id=word_tokenizer.pad_token_id, n_train=4,
                                         n_val=2, batch_size=4)
    batch = next(iter(data.val_dataloader()))
    assert [tokenize(example).input_ids for example in batch["examples"]] == [
        row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]
    assert set(batch["roles"].unique().tolist()) <= {Role.PROMPT, Role.ANSWER, Role.PAD}
    assert (batch["input_ids"][batch["attention_mask"] == 0] == word_tokenizer.pad_token_id).all()


ROLES = torch.tensor([[Role.PROMPT, Role.PROMPT, Role.TRACE, Role.TRACE, Role.LATENT, Role.ANSWER, Role.PAD]])
IDS = torch.arange(10, 17).unsqueeze(0)


@pytest.mark.parametrize(
    "spec, weights",
    [
        ("train_on_all", [1, 1, 1, 1, 0, 1, 0]),
        ("train_on_completion", [0, 0, 1, 1, 0, 1, 0]),
        ("mask_trace", [0, 0, 0, 0, 0, 1, 0]),
        ("weighted_trace(0.25)", [0, 0, 0.25, 0.25, 0, 1, 0]),
        ("weighted_trace(0)", [0, 0, 0, 0, 0, 1, 0]),
    ],
)
def test_mask_strategies(spec, weights):
    labels, loss_weights = mask_strategy(spec).apply(IDS, ROLES)
    assert loss_weights.tolist() == [weights]
    expected = [i if w > 0 else IGNORE_INDEX for i, w in zip(IDS[0].tolist(), weights)]
    assert labels.tolist() == [expected]


@pytest.mark.parametrize("spec", ["mask_everything", "weighted_trace()", "weighted_trace(-1)", "weighted_trace(x)"])
def test_unknown_or_invalid_mask_strategy_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="mask strategy"):
        mask_strategy(spec)


def test_example_fields_survive_in_reasoner_segments(word_tokenizer):
    from framework.models import Reasoner, build_model

    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "cot")
    example = Example("1 + 2", "1 + 2 = 3", "3")
    assert "".join(s.text for s in reasoner.segments(example)) == "1 + 2<think>1 + 2 = 3</think>3"
