"""The model and tokenizer every recipe starts from: a local checkpoint grows the reasoning tokens correctly."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from framework.data.tokenizer import REASONING_TOKENS
from framework.models import build_model
from recipes.models import ModelConfig, model_and_tokenizer, model_for, rendering_of, tokenizer_for


def _checkpoint_without_reasoning_tokens(path, spare_rows: int) -> tuple[int, int]:
    """A tiny model whose tokenizer lacks the reasoning tokens and whose embedding has `spare_rows` unused rows
    (as Qwen pads its matrix past the vocabulary). Returns (vocabulary size, EOS id)."""
    words = ["1", "2", "3", "+", "="]
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    assert not set(REASONING_TOKENS) & set(tokenizer.get_vocab())
    model = build_model("llama", "1m", tokenizer, seed=0)
    model.resize_token_embeddings(len(tokenizer) + spare_rows, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[len(tokenizer):] = 7.0  # what the spare rows held: never trained
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return len(tokenizer), tokenizer.eos_token_id


@pytest.mark.parametrize("spare_rows", [0, 16])
def test_a_checkpoint_starts_every_reasoning_token_distinct_and_from_trained_rows(tmp_path, spare_rows):
    size, eos = _checkpoint_without_reasoning_tokens(tmp_path, spare_rows)
    model, tokenizer = model_and_tokenizer(ModelConfig(checkpoint=str(tmp_path)), ["ignored"], seed=0)
    assert len(tokenizer) == size + len(REASONING_TOKENS)
    embedding = model.get_input_embeddings().weight
    assert embedding.shape[0] >= len(tokenizer)
    rows = embedding[[*tokenizer.convert_tokens_to_ids(list(REASONING_TOKENS)), eos]]
    assert torch.cdist(rows, rows)[~torch.eye(len(rows), dtype=torch.bool)].min() > 0
    # A word vocabulary has no pieces for "<think>": the rows are drawn from the trained rows' statistics, never
    # the spare rows' untrained 7.0 (which would put every coordinate near 7).
    assert rows[:-1].abs().max() < 7.0 / 2


def test_a_fresh_model_reads_a_word_tokenizer_of_the_vocabulary():
    model, tokenizer = model_and_tokenizer(ModelConfig(family="gpt2"), ["7", "+", "8"], seed=0)
    assert {"7", "+", "8", *REASONING_TOKENS} <= set(tokenizer.get_vocab())
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_a_tokenizer_that_is_not_the_checkpoints_is_refused(tmp_path):
    _checkpoint_without_reasoning_tokens(tmp_path, spare_rows=0)
    config = ModelConfig(checkpoint=str(tmp_path))
    assert tokenizer_for(config, []).get_vocab() == model_and_tokenizer(config, [], seed=0)[1].get_vocab()
    with pytest.raises(ValueError, match="does not match the checkpoint's own"):
        model_for(config, tokenizer_for(ModelConfig(), ["other", "words"]), seed=0)


def test_auto_rendering_is_chat_exactly_for_a_checkpoint_whose_tokenizer_has_a_template(tmp_path):
    _checkpoint_without_reasoning_tokens(tmp_path, spare_rows=0)
    config = ModelConfig(checkpoint=str(tmp_path))
    plain = tokenizer_for(config, [])
    assert rendering_of(config, plain) == "completion"  # no template: the plain text
    plain.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    assert rendering_of(config, plain) == "chat"
    assert rendering_of(ModelConfig(checkpoint=str(tmp_path), rendering="completion"), plain) == "completion"
    assert rendering_of(ModelConfig(), tokenizer_for(ModelConfig(), ["1"])) == "completion"  # a tiny model
    with pytest.raises(ValueError, match="model.rendering=chat needs model.checkpoint"):
        ModelConfig(rendering="chat")
