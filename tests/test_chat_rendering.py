"""Chat-template rendering of every format: exact roles against the template's own text, training, generation, saving.

Two template families on a byte-level BPE tokenizer built here: ChatML with a default system prompt that the
template injects (SmolLM2's template, verbatim) and Llama-3's headers, whose end of turn `<|eot_id|>` is not the
tokenizer's EOS. The real SmolLM2 tokenizer is checked in `tests/test_real_model.py`.
"""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch

from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.data.formats import read_examples
from framework.data.sample import Example, Role
from framework.data.tokenizer import REASONING_TOKENS
from framework.models import ChatRendering, CompletionRendering, LatentConfig, Reasoner, build_model
from framework.regimes.base import OptimizerConfig
from framework.regimes.latent_sft import LatentSFT
from framework.regimes.policy import TokenPolicy
from framework.regimes.sft import SFT
from framework.rollout import SamplingConfig, generate

CHATML = (  # SmolLM2-135M-Instruct's template
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (  # Llama-3-Instruct's layout: BOS from the template, headers, content trimmed, <|eot_id|> closes a turn
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
TEMPLATES = {"chatml": (CHATML, ["<|im_start|>", "<|im_end|>"]),
             "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])}
EXAMPLE = Example(prompt="What is 12 plus 35?", trace="First add the tens, then the units.", answer="47")


@pytest.fixture(params=list(TEMPLATES))
def chat_tokenizer(request, bpe_tokenizer):
    """The tests' BPE tokenizer with a chat family's template and header tokens (its EOS stays `<eos>`)."""
    template, specials = TEMPLATES[request.param]
    tokenizer = copy.deepcopy(bpe_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template
    return tokenizer


def _model(tokenizer, seed: int = 0):
    return build_model("llama", "1m", tokenizer, seed=seed)


def _loss_before_and_after(module, data, batch, *, max_steps: int) -> tuple[float, float]:
    """`module`'s loss on `batch` before and after `max_steps` steps of a plain Trainer fit on `data`."""
    with torch.no_grad():
        before = module.loss(batch).item()
    L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(module, data)
    with torch.no_grad():
        return before, module.loss(batch).item()


FORMATS = {"cot": {}, "none": {}, "pause": {"pause_tokens": 3}, "hybrid": {},
           "latent": {"latent": LatentConfig(thoughts_per_step=1, max_stage=1)}}


@pytest.mark.parametrize("mode", list(FORMATS))
@pytest.mark.parametrize("system_prompt", [None, "Answer with a number."])
def test_roles_cover_the_assistant_content_and_its_end_of_turn_only(mode, system_prompt, chat_tokenizer):
    reasoner = Reasoner(_model(chat_tokenizer), chat_tokenizer, mode, rendering=ChatRendering(system_prompt),
                        **FORMATS[mode])
    sample = reasoner.tokenize(EXAMPLE)
    prompt_ids = reasoner.prompt_ids(EXAMPLE)
    assert sample.input_ids[: len(prompt_ids)] == prompt_ids  # generation starts from the training prefix
    markup = "".join(s.text for s in reasoner.prompt_segments(EXAMPLE))[len(EXAMPLE.prompt):]
    written = "".join(s.text for s in reasoner.completion_segments(EXAMPLE))
    system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    conversation = [*system, {"role": "user", "content": EXAMPLE.prompt},
                    {"role": "assistant", "content": markup + written}]
    template_text = chat_tokenizer.apply_chat_template(conversation, tokenize=False)
    decode = lambda ids: chat_tokenizer.decode(ids, skip_special_tokens=False)
    assert template_text.startswith(decode(sample.input_ids))
    assert not template_text[len(decode(sample.input_ids)):].strip()  # only the whitespace that opens a next turn

    trained = [i for i, role in zip(sample.input_ids, sample.roles) if role in (Role.TRACE, Role.ANSWER)]
    end = reasoner.rendering.end_ids(chat_tokenizer)
    assert decode(trained) == written + decode(end)
    assert decode(end) in ("<|im_end|>", "<|eot_id|>") and end != [chat_tokenizer.eos_token_id]
    first_trained = next(k for k, role in enumerate(sample.roles) if role in (Role.TRACE, Role.ANSWER))
    assert all(role in (Role.PROMPT, Role.LATENT) for role in sample.roles[:first_trained])
    assert decode(sample.input_ids[:first_trained]).endswith(markup)  # the format's markup opens the assistant turn
    if system_prompt is None and "SmolLM" in chat_tokenizer.chat_template:
        assert "You are a helpful AI assistant" in decode(sample.input_ids[:first_trained])  # injected, untrained


def test_a_tokenizer_without_a_chat_template_is_refused(bpe_tokenizer):
    with pytest.raises(ValueError, match="chat rendering needs a tokenizer with a chat template"):
        Reasoner(_model(bpe_tokenizer), bpe_tokenizer, "cot", rendering="chat")


def test_parse_strips_the_end_of_turn_and_counts_the_completion_finished(chat_tokenizer):
    reasoner = Reasoner(_model(chat_tokenizer), chat_tokenizer, "cot", rendering="chat")
    sample = reasoner.tokenize(EXAMPLE)
    generation = reasoner.parse(sample.input_ids[len(reasoner.prompt_ids(EXAMPLE)):])
    assert (generation.trace, generation.answer, generation.finished) == (EXAMPLE.trace, EXAMPLE.answer, True)
    assert reasoner.stop_token_id == reasoner.rendering.end_ids(chat_tokenizer)[0]


def test_the_rendering_round_trips_through_save_and_load(chat_tokenizer, tmp_path):
    reasoner = Reasoner(_model(chat_tokenizer), chat_tokenizer, "pause", pause_tokens=2,
                        rendering=ChatRendering("Be brief."))
    reasoner.save_pretrained(tmp_path / "chat")
    loaded = Reasoner.from_pretrained(tmp_path / "chat")
    assert isinstance(loaded.rendering, ChatRendering) and loaded.rendering.system_prompt == "Be brief."
    assert loaded.tokenize(EXAMPLE) == reasoner.tokenize(EXAMPLE)
    plain = Reasoner.from_pretrained(tmp_path / "chat", rendering="completion")  # a rendering given here wins
    assert isinstance(plain.rendering, CompletionRendering)


def test_sft_through_the_template_learns_to_answer_and_stop(chat_tokenizer, addition_task, tmp_path):
    """A tiny model trained through the template lowers its loss, and its greedy generations end at the end of
    turn (not EOS, which this tokenizer keeps apart), which parsing strips."""
    L.seed_everything(0)
    reasoner = Reasoner(_model(chat_tokenizer), chat_tokenizer, "cot", rendering="chat")
    assert set(REASONING_TOKENS) <= set(chat_tokenizer.get_vocab())
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=chat_tokenizer.pad_token_id,
                                         n_train=8, n_val=1, batch_size=8)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0))
    batch = next(iter(data.train_dataloader()))
    before, after = _loss_before_and_after(module, data, batch, max_steps=80)
    assert after < 0.3 * before, (before, after)
    examples = data.splits["train"][:4]
    generations = generate(reasoner, examples, SamplingConfig(max_new_tokens=48, do_sample=False))
    # Decoding stopped at the end of turn, and parsing read it as the end: EOS is another token here.
    assert all(g.finished and g.trace for g in generations), generations
    # So do an RL policy's rollouts: each ends at the end of turn, counts as finished, and its text leaves it out.
    rollout = TokenPolicy(reasoner).rollout(examples, SamplingConfig(max_new_tokens=48, do_sample=False))
    assert all(ids[-1] == reasoner.stop_token_id for ids in rollout.completion_ids)
    assert not rollout.truncated.any() and not any("<|im_end|>" in text for text in rollout.completions)


def test_the_user_turn_is_the_text_before_the_reasoning_markup(chat_tokenizer):
    latent = Reasoner(_model(chat_tokenizer), chat_tokenizer, "latent", rendering="chat",
                      latent=LatentConfig(thoughts_per_step=1, max_stage=1))
    ids = latent.prompt_ids(EXAMPLE)
    text = chat_tokenizer.decode(ids, skip_special_tokens=False)
    # The thoughts sit inside the assistant's think block, after the template's assistant header.
    assert text.index(EXAMPLE.prompt) < text.rindex("assistant") < text.index("<think><bot><latent>")
    assert ids.count(latent.latent_token_id) == latent.latent.num_thoughts(latent.stage)
    assert latent.prompt_ids(EXAMPLE) == ids


def test_trl_conversational_rows_train_through_the_template(chat_tokenizer, addition_task, tmp_path):
    """TRL's conversational prompt/completion rows (a system prompt, a user turn, an assistant reply with its think
    block inline) load as they are and train through the template, their system prompt in place of any default."""
    rows = []
    for example in generate_splits(addition_task, 0, n_train=8, n_val=0, n_test=0)["train"]:
        rows.append({"prompt": [{"role": "system", "content": "Add the numbers."},
                                {"role": "user", "content": example.prompt}],
                     "completion": [{"role": "assistant", "content": f"<think>{example.trace}</think>{example.answer}"}]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples = read_examples(path)

    L.seed_everything(0)
    reasoner = Reasoner(_model(chat_tokenizer), chat_tokenizer, "cot", rendering="chat")
    text = chat_tokenizer.decode(reasoner.prompt_ids(examples[0]), skip_special_tokens=False)
    assert "Add the numbers." in text and "SmolLM" not in text
    with pytest.raises(ValueError, match="give it once"):
        Reasoner(reasoner.model, chat_tokenizer, "cot", rendering=ChatRendering("Be brief.")).tokenize(examples[0])
    data = ReasoningDataModule(reasoner.tokenize, examples, examples[:1], pad_token_id=chat_tokenizer.pad_token_id,
                               batch_size=8)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0))
    batch = next(iter(data.train_dataloader()))
    before, after = _loss_before_and_after(module, data, batch, max_steps=20)
    assert after < 0.7 * before


def test_latent_sft_under_the_template_trains_and_generates(chat_tokenizer, addition_task):
    """Continuous thoughts inside the assistant's think block: the curriculum's staged rows tokenize through the
    template, LatentSFT lowers the loss, and a latent rollout from the templated prompt thinks, then writes."""
    L.seed_everything(0)
    config = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ")
    reasoner = Reasoner(_model(chat_tokenizer), chat_tokenizer, "latent", rendering="chat", latent=config)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=chat_tokenizer.pad_token_id,
                                         n_train=16, n_val=1, batch_size=8)
    module = LatentSFT(reasoner, addition_task, steps_per_stage=10, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0))
    examples = data.splits["train"][:8]
    batch = module.objective.batch(examples, [config.final_stage] * len(examples))
    before, after = _loss_before_and_after(module, data, batch, max_steps=40)
    assert after < 0.5 * before, (before, after)
    generations = generate(reasoner, examples[:2], SamplingConfig(max_new_tokens=24, do_sample=False))
    assert all(g.thoughts == config.num_thoughts(reasoner.stage) and g.answer_tokens for g in generations), generations
