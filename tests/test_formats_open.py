"""A reasoning format defined outside `framework.models.formats` trains and generates like a built-in one.

`AnswerFirst` writes the answer, then its justification in a think block (a
post-hoc rationale, the reverse of chain of thought). Nothing in the Reasoner,
the tokenization, the masks, SFT or the rollouts knows it exists: that is the
point of formats as classes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import lightning as L
from transformers import PreTrainedTokenizerBase

from framework.data.datamodule import ReasoningDataModule
from framework.data.sample import Example, Role, Segment
from framework.data.tokenizer import THINK_END, THINK_START
from framework.models import Generation, Reasoner, ReasoningFormat, build_model
from framework.regimes import SFT, OptimizerConfig
from framework.rollout import SamplingConfig, generate, sample


class AnswerFirst(ReasoningFormat):
    """prompt, then `answer <think> trace </think>`: the answer is committed to before any reasoning."""

    name = "answer_first"
    required_tokens = (THINK_START, THINK_END)

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [Segment(Role.PROMPT, example.prompt)]

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [Segment(Role.ANSWER, example.answer), Segment(Role.TRACE, THINK_START + example.trace + THINK_END)]

    def parse(self, completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
        ids = list(completion_ids)
        finished = bool(ids) and ids[-1] == tokenizer.eos_token_id
        ids = ids[:-1] if finished else ids
        start = tokenizer.convert_tokens_to_ids(THINK_START)
        cut = ids.index(start) if start in ids else len(ids)
        answer_ids, trace_ids = ids[:cut], ids[cut:]
        return Generation(
            trace=tokenizer.decode(trace_ids, skip_special_tokens=True).strip(),
            answer=tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
            trace_tokens=len(trace_ids) + int(finished),
            answer_tokens=len(answer_ids),
            finished=finished,
        )


def test_a_format_of_your_own_tokenizes_with_roles_and_parses_back(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, AnswerFirst())
    assert reasoner.mode == "answer_first" and reasoner.latent is None
    example = addition_task.generate(random.Random(0))
    sample = reasoner.tokenize(example)
    prompt_length = len(reasoner.prompt_ids(example))
    completion = sample.input_ids[prompt_length:]
    roles = sample.roles[prompt_length:]
    answer_length = len(word_tokenizer(example.answer, add_special_tokens=False).input_ids)
    assert roles[:answer_length] == [Role.ANSWER] * answer_length and set(roles[answer_length:]) == {Role.TRACE}
    parsed = reasoner.parse(completion)
    assert (parsed.answer, parsed.trace, parsed.finished) == (example.answer, example.trace, True)


def test_sft_trains_a_format_of_your_own_and_generation_parses_with_it(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, AnswerFirst())
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=word_tokenizer.pad_token_id,
                                         n_train=256, n_val=8, batch_size=32)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5))
    batch = next(iter(data.train_dataloader()))
    before = module.loss(batch).item()
    L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, data)
    after = module.loss(batch).item()
    assert after < 0.6 * before, (before, after)
    examples = [Example("1 + 2", "", "3"), Example("4 + 4 + 1", "", "9")]
    config = SamplingConfig(max_new_tokens=24)
    completions = sample(reasoner.model, [reasoner.prompt_ids(e) for e in examples],
                         pad_token_id=word_tokenizer.pad_token_id, eos_token_id=word_tokenizer.eos_token_id, config=config)
    assert generate(reasoner, examples, config) == [AnswerFirst().parse(ids, word_tokenizer) for ids in completions]
