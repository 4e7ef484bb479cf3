"""Latent reasoners: the format per curriculum stage, the cached thought forward against Coconut's
full-sequence passes, batched rollouts against a naive loop, checkpoints and bad input."""

from __future__ import annotations

import random
from dataclasses import replace
from functools import partial

import pytest
import torch
from _rounding import rounding_tolerance
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from framework.data.collate import collate_latent
from framework.data.masks import TRAIN_ON_COMPLETION
from framework.data.sample import Example, Role
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import (
    LATENT,
    LATENT_END,
    LATENT_START,
    PAUSE,
    REASONING_TOKENS,
    THINK_END,
    add_reasoning_tokens,
)
from framework.models import FAMILIES, LatentConfig, Reasoner, build_model, latent_forward, load_pretrained
from framework.models.backbone import position_ids_from_mask
from framework.models.latent import run_with_thoughts
from framework.probes import thought_features
from framework.regimes import LatentSFT
from framework.regimes.latent_policy import LatentPolicy
from framework.regimes.loss import hidden_states_loss
from framework.rollout import SamplingConfig, generate, latent_rollout, rollout_latent

CONFIG = LatentConfig(thoughts_per_step=2, max_stage=2, step_separator=" ; ")


def _random_model(family, tokenizer, dtype=torch.float64, seed=0, **kwargs):
    """A model whose outputs depend on its input (default init repeats one token), in `dtype`."""
    model = build_model(family, "1m", tokenizer, seed=seed, **kwargs)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def _examples(task, n, seed=0):
    rng = random.Random(seed)
    return [task.generate(rng) for _ in range(n)]


def _staged_batch(reasoner, examples, stages):
    samples = [reasoner.tokenize(example, stage) for example, stage in zip(examples, stages)]
    return collate_latent(samples, reasoner.tokenizer.pad_token_id, reasoner.latent_start_id)


def _mixed_batch(reasoner, addition_task):
    """Rows with 0, 2, 4 and 4 thoughts and a long prompt: left padding and unequal slot counts."""
    examples = _examples(addition_task, 3)
    examples.append(Example("1 + 1 + 1 + 1 + 1 + 1 + 1", "", "7"))
    return _staged_batch(reasoner, examples, [0, 1, 2, CONFIG.final_stage])


def _feed(hidden, projection):
    return projection(hidden) if projection is not None else hidden


def naive_coconut_hidden(model, input_ids, attention_mask, latent_id, projection=None, detach=False):
    """Coconut's training forward: one full-sequence pass per thought, each filling the next slot of every row."""
    embeds = model.get_input_embeddings()(input_ids)
    positions = position_ids_from_mask(attention_mask)
    slots = [row.nonzero().flatten().tolist() for row in (input_ids == latent_id)]

    def backbone(embeds):
        return model.base_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions).last_hidden_state

    for i in range(max(len(s) for s in slots)):
        hidden = backbone(embeds)
        rows = [row for row, columns in enumerate(slots) if len(columns) > i]
        columns = [slots[row][i] for row in rows]
        thoughts = _feed(hidden[rows, [c - 1 for c in columns]], projection)
        embeds = embeds.index_put((torch.tensor(rows), torch.tensor(columns)), thoughts.detach() if detach else thoughts)
    return backbone(embeds)


def naive_coconut_rollout(model, prompt, latent_id, eos_id, max_new_tokens, projection=None):
    """Coconut's generate, batch 1: re-run the whole embedded prefix for every thought and every token."""
    embeds = model.get_input_embeddings()(torch.tensor([prompt]))
    thoughts = []
    for column in [i for i, token in enumerate(prompt) if token == latent_id]:
        thought = model.base_model(inputs_embeds=embeds[:, :column]).last_hidden_state[:, -1]
        thoughts.append(thought[0])
        embeds = torch.cat([embeds[:, :column], _feed(thought, projection)[:, None], embeds[:, column + 1 :]], dim=1)
    tokens = []
    for _ in range(max_new_tokens):
        hidden = model.base_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        token = model.get_output_embeddings()(hidden).argmax(-1).item()
        tokens.append(token)
        if token == eos_id:
            break
        embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    return tokens, torch.stack(thoughts) if thoughts else torch.zeros(0, embeds.shape[-1], dtype=embeds.dtype)


# -- format --------------------------------------------------------------------------------------


def test_each_stage_replaces_steps_with_thoughts(word_tokenizer):
    task = AdditionChain(n_terms=4, max_operand=9)  # 3 steps
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "latent", latent=CONFIG)
    example = _examples(task, 1)[0]
    latent_id = reasoner.latent_token_id
    for stage, (thoughts, kept) in enumerate([(0, 3), (2, 2), (4, 1), (4, 0)]):
        sample = reasoner.tokenize(example, stage)
        prompt = reasoner.prompt_ids(example, stage)
        assert sample.input_ids[: len(prompt)] == prompt
        assert prompt[-1] == word_tokenizer.convert_tokens_to_ids(LATENT_END)
        assert sample.input_ids.count(latent_id) == thoughts
        assert [r for t, r in zip(sample.input_ids, sample.roles) if t == latent_id] == [Role.LATENT] * thoughts
        assert set(sample.roles[: len(prompt)]) <= {Role.PROMPT, Role.LATENT}
        generation = reasoner.parse(sample.input_ids[len(prompt):])
        assert generation.trace == " ; ".join(example.steps[3 - kept:])
        assert generation.answer == example.answer and generation.finished
    assert reasoner.stage == CONFIG.final_stage  # inference default: the final stage's thoughts
    assert reasoner.prompt_ids(example).count(latent_id) == 4


def test_rows_with_fewer_steps_than_the_stage_get_the_stage_thoughts_and_no_steps(word_tokenizer):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "latent",
                        latent=LatentConfig(thoughts_per_step=1, max_stage=3, step_separator=" ; "))
    example = _examples(AdditionChain(n_terms=2, max_operand=9), 1)[0]  # one step
    sample = reasoner.tokenize(example, stage=2)
    assert sample.input_ids.count(reasoner.latent_token_id) == 2  # as Coconut: s*c, not min(s, steps)*c
    assert Role.TRACE in sample.roles  # only </think> is left of the trace
    assert reasoner.parse(sample.input_ids[len(reasoner.prompt_ids(example, 2)):]).trace == ""


def test_pause_as_thought_puts_pause_tokens_in_the_slots(word_tokenizer, addition_task):
    config = LatentConfig(thoughts_per_step=2, max_stage=2, step_separator=" ; ", thought="pause")
    reasoner = Reasoner(_random_model("qwen3", word_tokenizer), word_tokenizer, "latent", latent=config)
    example = _examples(addition_task, 1)[0]
    ids = reasoner.prompt_ids(example)
    assert ids.count(word_tokenizer.convert_tokens_to_ids(PAUSE)) == 4 and reasoner.latent_token_id not in ids
    batch = _staged_batch(reasoner, _examples(addition_task, 3), [0, 1, 3])
    plain = reasoner.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      position_ids=position_ids_from_mask(batch["attention_mask"])).last_hidden_state
    hidden = latent_forward(reasoner.model, batch["input_ids"], batch["attention_mask"], latent_token_id=reasoner.latent_token_id)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], plain[real])
    generation = generate(reasoner, [example], SamplingConfig(max_new_tokens=5))[0]
    assert generation.thoughts == 0  # the pauses are given, not computed one by one


def test_collate_latent_aligns_bot(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "latent", latent=CONFIG)
    batch = _mixed_batch(reasoner, addition_task)
    bot = batch["input_ids"] == reasoner.latent_start_id
    assert bot.sum(1).tolist() == [1, 1, 1, 1]
    assert len(set(bot.int().argmax(1).tolist())) == 1
    assert (batch["roles"][batch["attention_mask"] == 0] == Role.PAD).all()
    assert batch["attention_mask"][:, 0].tolist() != [1, 1, 1, 1]  # somebody is left-padded
    with pytest.raises(ValueError, match="row 0 has no token"):
        collate_latent([Reasoner(reasoner.model, word_tokenizer, "cot").tokenize(_examples(addition_task, 1)[0])],
                       word_tokenizer.pad_token_id, reasoner.latent_start_id)


# -- training forward ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_forward_equals_coconut_full_passes_in_loss_and_gradients(family, word_tokenizer, addition_task):
    config = LatentConfig(thoughts_per_step=2, max_stage=2, step_separator=" ; ", projection=family == "llama")
    reasoner = Reasoner(_random_model(family, word_tokenizer), word_tokenizer, "latent", latent=config)
    model, projection = reasoner.model, reasoner.projection
    if projection is not None:
        with torch.no_grad():
            projection.weight.add_(0.1 * torch.randn_like(projection.weight))
    batch = _mixed_batch(reasoner, addition_task)
    labels, weights = TRAIN_ON_COMPLETION.apply(batch["input_ids"], batch["roles"])
    parameters = [*model.parameters(), *(projection.parameters() if projection is not None else [])]
    args = (model, batch["input_ids"], batch["attention_mask"])

    def loss_and_grads(hidden):
        loss = hidden_states_loss(model, hidden, labels, weights)
        return loss, torch.autograd.grad(loss, parameters, allow_unused=True)

    def relative_errors(grads, reference):
        return [((g - r).norm() / r.norm()).item() for g, r in zip(grads, reference) if r is not None and r.norm() > 0]

    ours, our_grads = loss_and_grads(latent_forward(*args, latent_token_id=reasoner.latent_token_id, projection=projection))
    naive, naive_grads = loss_and_grads(naive_coconut_hidden(*args, reasoner.latent_token_id, projection))
    torch.testing.assert_close(ours, naive, rtol=1e-10, atol=1e-10)
    # Hugging Face's RMSNorm and RoPE compute in float32 even in a float64 Llama/Qwen3, and the two
    # graphs sum gradients in different orders; GPT-2 is float64 throughout.
    assert max(relative_errors(our_grads, naive_grads)) < (1e-9 if family == "gpt2" else 1e-5)
    # The gradient really flows through the fed-back thoughts: cutting them changes it.
    _, detached = loss_and_grads(naive_coconut_hidden(*args, reasoner.latent_token_id, projection, detach=True))
    assert max(relative_errors(our_grads, detached)) > 0.1


def _hidden_and_losses(reasoner, batch, rows):
    """Hidden states and per-row losses of the batch, and of each row run alone."""
    forward = partial(latent_forward, reasoner.model, latent_token_id=reasoner.latent_token_id)
    hidden = forward(batch["input_ids"], batch["attention_mask"])
    labels, weights = TRAIN_ON_COMPLETION.apply(batch["input_ids"], batch["roles"])
    results = []
    for row in rows:
        real = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row, real][None]
        alone = forward(ids, torch.ones_like(ids))
        row_loss = hidden_states_loss(reasoner.model, hidden[row : row + 1], labels[row : row + 1], weights[row : row + 1])
        alone_loss = hidden_states_loss(reasoner.model, alone, labels[row : row + 1, real], weights[row : row + 1, real])
        results.append((hidden[row, real], alone[0], row_loss, alone_loss))
    return results


def test_batched_rows_equal_each_row_alone(word_tokenizer, addition_task):
    """Padding and alignment change nothing: exact in float64; in float32 within the rounding that float64 measures."""
    def run(dtype):
        reasoner = Reasoner(_random_model("qwen3", word_tokenizer, dtype), word_tokenizer, "latent", latent=CONFIG)
        batch = _mixed_batch(reasoner, addition_task)
        return _hidden_and_losses(reasoner, batch, range(batch["input_ids"].shape[0]))

    exact, single = run(torch.float64), run(torch.float32)
    for hidden, alone, row_loss, alone_loss in exact:
        torch.testing.assert_close(hidden, alone, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(row_loss, alone_loss, rtol=1e-10, atol=1e-10)
    for (hidden, alone, row_loss, alone_loss), (gold_hidden, _, gold_loss, _) in zip(single, exact):
        torch.testing.assert_close(hidden.double(), alone.double(), rtol=0, atol=rounding_tolerance(alone, gold_hidden))
        torch.testing.assert_close(row_loss.double(), alone_loss.double(), rtol=0,
                                   atol=rounding_tolerance(alone_loss, gold_loss))


def test_one_cached_position_per_thought_column_and_never_the_lm_head(word_tokenizer, addition_task, fed_inputs):
    reasoner = Reasoner(_random_model("llama", word_tokenizer), word_tokenizer, "latent", latent=CONFIG)
    batch = _mixed_batch(reasoner, addition_task)
    head_calls = []
    handle = reasoner.model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(1))
    try:
        run_with_thoughts(reasoner.model, batch["input_ids"], batch["attention_mask"], latent_token_id=reasoner.latent_token_id)
    finally:
        handle.remove()
    assert len(fed_inputs) == 4  # the most thoughts in a row, not one pass per thought per row
    assert all(inputs.shape[:2] == (4, 1) for inputs in fed_inputs)
    assert head_calls == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matched_thoughts_enter_at_the_mean_embedding_norm(word_tokenizer, addition_task, fed_inputs, dtype):
    # A freshly built model, as training starts from: its last hidden states (after the final RMSNorm, ~sqrt(H))
    # dwarf its input embeddings (initialised at std 0.02), as a pretrained model's do (README: 14-15x for SmolLM2).
    model = build_model("llama", "1m", word_tokenizer, seed=0).to(dtype)
    reasoner = Reasoner(model, word_tokenizer, "latent", latent=replace(CONFIG, match_norm=True))
    batch = _staged_batch(reasoner, _examples(addition_task, 4), [CONFIG.final_stage] * 4)  # thoughts share columns
    fed = fed_inputs
    embedding_norm = model.get_input_embeddings().weight.double().norm(dim=-1).mean()
    ratios = {}
    for match_norm in (False, True):
        fed.clear()
        hidden = run_with_thoughts(model, batch["input_ids"], batch["attention_mask"],
                                   latent_token_id=reasoner.latent_token_id, match_norm=match_norm).hidden
        ratios[match_norm] = torch.cat(fed, dim=1).double().norm(dim=-1) / embedding_norm
        assert len(fed) == CONFIG.num_thoughts(CONFIG.final_stage) and torch.isfinite(hidden).all()
    assert ratios[False].min() > 10  # the problem: plain feedback is far from any token's embedding
    # Matched: each thought's norm is the target, up to the rounding of two norms over H terms in `dtype`.
    bound = 4 * model.config.hidden_size * torch.finfo(dtype).eps
    torch.testing.assert_close(ratios[True], torch.ones_like(ratios[True]), rtol=0, atol=bound)
    # The loss backpropagates through the rescaled thoughts to finite gradients.
    loss = hidden_states_loss(model, run_with_thoughts(model, batch["input_ids"], batch["attention_mask"],
                                                       latent_token_id=reasoner.latent_token_id,
                                                       match_norm=True).hidden,
                              *TRAIN_ON_COMPLETION.apply(batch["input_ids"], batch["roles"]))
    loss.backward()
    assert torch.isfinite(model.get_input_embeddings().weight.grad).all()


def test_training_rollouts_and_rl_all_feed_matched_thoughts(word_tokenizer, addition_task, fed_inputs):
    """`match_norm` is the reasoner's setting, so every path that feeds thoughts back honours it: LatentSFT's loss,
    latent rollouts and the latent policy's log-probs (GRPO)."""
    model = build_model("llama", "1m", word_tokenizer, seed=0)  # plain feedback would enter at ~52x (test above)
    reasoner = Reasoner(model, word_tokenizer, "latent", latent=replace(CONFIG, match_norm=True))
    fed = fed_inputs
    target = model.get_input_embeddings().weight.detach().double().norm(dim=-1).mean()
    bound = 4 * model.config.hidden_size * torch.finfo(torch.float32).eps

    def assert_matched():
        assert fed, "no thought was fed back"
        ratios = torch.cat(fed, dim=1).double().norm(dim=-1) / target
        torch.testing.assert_close(ratios, torch.ones_like(ratios), rtol=0, atol=bound)
        fed.clear()

    examples = _examples(addition_task, 3)  # every row at the final stage: every thought-column input is a thought
    sft = LatentSFT(reasoner, addition_task, curriculum=False)
    with torch.no_grad():
        sft.loss(sft.objective.batch(examples, [CONFIG.final_stage] * len(examples)))
    assert_matched()
    reasoner.stage = CONFIG.final_stage
    rollout_latent(reasoner, examples, SamplingConfig(max_new_tokens=2))
    assert_matched()
    policy = LatentPolicy(reasoner)
    rollout = policy.rollout(examples, SamplingConfig(max_new_tokens=2))
    fed.clear()
    with torch.no_grad():
        policy.logprobs(policy.module, rollout.inputs)
    assert_matched()


# -- rollouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rollout_equals_rows_alone_and_a_naive_coconut_loop(family, word_tokenizer, addition_task):
    config = LatentConfig(thoughts_per_step=2, max_stage=2, step_separator=" ; ", projection=family == "gpt2")
    reasoner = Reasoner(_random_model(family, word_tokenizer), word_tokenizer, "latent", latent=config)
    examples = _examples(addition_task, 4, seed=1) + [Example("1 + 1 + 1 + 1 + 1 + 1 + 1", "", "7")]
    prompts = [reasoner.prompt_ids(example, stage) for example, stage in zip(examples, [3, 3, 1, 0, 3])]
    ids = {"latent_token_id": reasoner.latent_token_id, "pad_token_id": word_tokenizer.pad_token_id,
           "eos_token_id": word_tokenizer.eos_token_id, "config": SamplingConfig(max_new_tokens=10),
           "projection": reasoner.projection, "return_thoughts": True}
    batched = latent_rollout(reasoner.model, prompts, **ids)
    assert batched.num_thoughts == [4, 4, 2, 0, 4]
    hidden_size = reasoner.model.config.hidden_size
    assert [tuple(thoughts.shape) for thoughts in batched.thoughts] == [(k, hidden_size) for k in [4, 4, 2, 0, 4]]
    assert batched.num_tokens == [len(c) for c in batched.completions]
    assert len({tuple(c) for c in batched.completions}) > 1
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            alone = latent_rollout(reasoner.model, [prompt], **ids)
            tokens, thoughts = naive_coconut_rollout(reasoner.model, prompt, reasoner.latent_token_id,
                                                     word_tokenizer.eos_token_id, 10, reasoner.projection)
            assert batched.completions[row] == alone.completions[0] == tokens
            torch.testing.assert_close(batched.thoughts[row], thoughts)


def test_rows_with_fewer_thoughts_are_not_padded_into_their_features(word_tokenizer, addition_task):
    reasoner = Reasoner(_random_model("llama", word_tokenizer), word_tokenizer, "latent", latent=CONFIG)
    prompts = [reasoner.prompt_ids(example, stage) for example, stage in zip(_examples(addition_task, 2), [3, 1])]
    ids = {"latent_token_id": reasoner.latent_token_id, "pad_token_id": word_tokenizer.pad_token_id,
           "eos_token_id": word_tokenizer.eos_token_id, "config": SamplingConfig(max_new_tokens=2),
           "return_thoughts": True}
    rollout = latent_rollout(reasoner.model, prompts, **ids)
    assert rollout.num_thoughts == [4, 2]
    alone = [latent_rollout(reasoner.model, [prompt], **ids).thoughts[0] for prompt in prompts]
    torch.testing.assert_close(thought_features(rollout.thoughts, "mean"),
                               torch.stack([thoughts.float().mean(0) for thoughts in alone]))
    torch.testing.assert_close(thought_features(rollout.thoughts, "last"),
                               torch.stack([thoughts.float()[-1] for thoughts in alone]))


def test_rollout_never_reruns_the_prefix(word_tokenizer, addition_task):
    reasoner = Reasoner(_random_model("llama", word_tokenizer), word_tokenizer, "latent", latent=CONFIG)
    prompts = [reasoner.prompt_ids(example) for example in _examples(addition_task, 3)]
    positions = []
    layer = reasoner.model.base_model.layers[0]
    handle = layer.register_forward_pre_hook(lambda module, args, kwargs: positions.append(
        (args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True)
    max_new = 6
    try:
        rollout = latent_rollout(reasoner.model, prompts, latent_token_id=reasoner.latent_token_id,
                                 pad_token_id=word_tokenizer.pad_token_id, eos_token_id=word_tokenizer.eos_token_id,
                                 config=SamplingConfig(max_new_tokens=max_new))
    finally:
        handle.remove()
    length = max(len(p) for p in prompts)
    generated = max(rollout.num_tokens)
    # every prompt column once, then one column per generated token after the first
    assert sum(positions) == length + generated - 1
    assert len(positions) == 1 + 4 + 1 + (generated - 1)  # prefix, 4 thoughts, <eot>, decode steps


def test_sampled_rollout_is_seeded_and_honours_the_config(word_tokenizer, addition_task):
    reasoner = Reasoner(_random_model("gpt2", word_tokenizer, torch.float32), word_tokenizer, "latent", latent=CONFIG)
    examples = _examples(addition_task, 6)
    config = SamplingConfig(max_new_tokens=7, do_sample=True, temperature=1.5, top_k=20)
    torch.manual_seed(3)
    first = rollout_latent(reasoner, examples, config).completions
    torch.manual_seed(3)
    assert rollout_latent(reasoner, examples, config).completions == first
    assert first != rollout_latent(reasoner, examples, SamplingConfig(max_new_tokens=7)).completions
    assert all(len(c) <= 7 for c in first)


def test_generate_in_latent_mode_counts_thoughts_as_generated(word_tokenizer, addition_task):
    reasoner = Reasoner(_random_model("llama", word_tokenizer), word_tokenizer, "latent", latent=CONFIG)
    examples = _examples(addition_task, 3)
    config = SamplingConfig(max_new_tokens=8)
    rollout = rollout_latent(reasoner, examples, config, return_thoughts=True)
    generations = generate(reasoner, examples, config)
    for generation, completion in zip(generations, rollout.completions):
        parsed = reasoner.parse(completion)
        assert (generation.trace, generation.answer) == (parsed.trace, parsed.answer)
        assert generation.thoughts == 4 and generation.num_tokens == len(completion) + 4
    reasoner.stage = 1
    assert rollout_latent(reasoner, examples, config).num_thoughts == [2, 2, 2]


# -- tokens and checkpoints ----------------------------------------------------------------------


def _bare_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(["<pad>", "<eos>", "<unk>", "1", "2", "+", "="])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")


def test_latent_mode_names_the_missing_tokens(word_tokenizer):
    tokenizer = _bare_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    model = build_model("gpt2", "1m", word_tokenizer)
    with pytest.raises(ValueError, match=r"lacks .*'<bot>', '<latent>', '<eot>'.*add_reasoning_tokens"):
        Reasoner(model, tokenizer, "latent")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_new_tokens_grow_the_model_and_a_latent_checkpoint_round_trips(family, tmp_path):
    tokenizer = _bare_tokenizer()
    model = build_model(family, "1m", tokenizer, seed=0)
    if family == "llama":
        model.config.tie_word_embeddings = False  # exercise a separate output matrix too
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    assert add_reasoning_tokens(tokenizer, model) == list(REASONING_TOKENS)  # how they start: test_reasoning_tokens
    config = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ", projection=True, match_norm=True)
    reasoner = Reasoner(model, tokenizer, "latent", latent=config)
    with torch.no_grad():
        reasoner.projection.weight.add_(0.05 * torch.randn_like(reasoner.projection.weight))
    reasoner.save_pretrained(tmp_path / "ckpt")
    again = Reasoner.from_pretrained(tmp_path / "ckpt")  # the latent_config.json makes it a latent reasoner
    assert again.mode == "latent" and again.latent == config
    torch.testing.assert_close(again.projection.weight, reasoner.projection.weight)
    examples = [Example("1 + 2", "", "3"), Example("2 + 2 + 1", "", "5")]
    sampling = SamplingConfig(max_new_tokens=5)
    reasoner.model.eval()
    assert rollout_latent(again, examples, sampling).completions == rollout_latent(reasoner, examples, sampling).completions
    torch.testing.assert_close(rollout_latent(again, examples, sampling, return_thoughts=True).thoughts,
                               rollout_latent(reasoner, examples, sampling, return_thoughts=True).thoughts)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt"), type(model))  # still a plain HF checkpoint
    load_pretrained(tmp_path / "ckpt")


def test_a_latent_checkpoint_loads_only_as_latent_and_needs_its_projection(word_tokenizer, tmp_path):
    config = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ", projection=True)
    Reasoner(build_model("gpt2", "1m", word_tokenizer), word_tokenizer, "latent", latent=config).save_pretrained(
        tmp_path / "ckpt"
    )
    with pytest.raises(ValueError, match="is a latent reasoner .* not format='cot'"):
        Reasoner.from_pretrained(tmp_path / "ckpt", "cot")
    assert Reasoner.from_pretrained(tmp_path / "ckpt", "latent").latent == config
    (tmp_path / "ckpt" / "latent_projection.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no latent_projection.safetensors, but its latent_config.json says"):
        Reasoner.from_pretrained(tmp_path / "ckpt")
    # A checkpoint without a latent config (here: cot) loads as cot, or as a fresh latent reasoner when asked.
    Reasoner(build_model("gpt2", "1m", word_tokenizer), word_tokenizer, "cot").save_pretrained(tmp_path / "cot")
    assert Reasoner.from_pretrained(tmp_path / "cot").mode == "cot"
    fresh = Reasoner.from_pretrained(tmp_path / "cot", "latent", latent=config)
    assert torch.equal(fresh.projection.weight, torch.eye(fresh.projection.in_features))


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"thoughts_per_step": 0}, "thoughts_per_step must be >= 1"),
        ({"max_stage": 0}, "max_stage must be >= 1"),
        ({"thought": "dream"}, "thought must be 'continuous' or 'pause'"),
        ({"thought": "pause", "projection": True}, "projection=True"),
    ],
)
def test_latent_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        LatentConfig(**options)


def test_bad_stages_separators_and_steps_are_named(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "latent", latent=CONFIG)
    example = _examples(addition_task, 1)[0]
    for stage in (-1, CONFIG.final_stage + 1):
        with pytest.raises(ValueError, match=r"stage must be in 0 … 3"):
            reasoner.tokenize(example, stage)
    with pytest.raises(ValueError, match=r"stage must be in 0 … 3"):
        reasoner.stage = 7
    no_steps = Example(example.prompt, example.trace, example.answer)
    with pytest.raises(ValueError, match="has a trace but no `steps`"):
        reasoner.tokenize(no_steps, 1)
    assert reasoner.tokenize(no_steps, CONFIG.final_stage).input_ids  # the final stage needs no steps
    # An empty trace (a weak policy that skipped every step) has zero steps: every stage keeps nothing.
    empty = Example(example.prompt, "", example.answer)
    for stage in range(CONFIG.final_stage + 1):
        completion = "".join(segment.text for segment in reasoner.completion_segments(empty, stage))
        assert completion == THINK_END + empty.answer
    no_separator = Reasoner(reasoner.model, word_tokenizer, "latent", latent=LatentConfig(max_stage=2))
    with pytest.raises(ValueError, match="step_separator is not set"):
        no_separator.tokenize(example, 1)
    cot = Reasoner(reasoner.model, word_tokenizer, "cot")
    with pytest.raises(ValueError, match="stage=1 is for the latent format"):
        cot.tokenize(example, 1)
    with pytest.raises(ValueError, match="configure the 'latent' mode"):
        Reasoner(reasoner.model, word_tokenizer, "cot", latent=CONFIG)


def test_more_thoughts_than_the_context_is_an_error(word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer, max_positions=32)
    with pytest.raises(ValueError, match="30 thoughts .* context of 32 positions"):
        Reasoner(model, word_tokenizer, "latent", latent=LatentConfig(thoughts_per_step=3, max_stage=10))


def test_a_prompt_ending_in_a_slot_is_an_error(word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer)
    latent_id = word_tokenizer.convert_tokens_to_ids(LATENT)
    prompt = word_tokenizer("1 + 2 <think> " + LATENT_START + LATENT).input_ids
    with pytest.raises(ValueError, match="shorter than two tokens or ends in a <latent> slot"):
        latent_rollout(model, [prompt], latent_token_id=latent_id, pad_token_id=0, eos_token_id=2)
