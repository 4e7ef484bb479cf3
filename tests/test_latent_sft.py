"""LatentSFT: Coconut's curriculum in a plain Lightning Trainer."""

from __future__ import annotations

import csv
import random
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch

from framework.data.datamodule import ReasoningDataModule
from framework.data.sample import Example, Role
from framework.models import LatentConfig, Reasoner, build_model
from framework.regimes import LatentSFT, OptimizerConfig
from framework.rollout import SamplingConfig

CONFIG = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ")  # addition_task has 2 steps
WARMUP_1 = OptimizerConfig(warmup_steps=1)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu", "logger": L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
        "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
        "num_sanity_val_steps": 0, "log_every_n_steps": 1, **kwargs,
    }
    return L.Trainer(**options)


def _reasoner(tokenizer, family="llama", config=CONFIG) -> Reasoner:
    return Reasoner(build_model(family, "1m", tokenizer, seed=0), tokenizer, "latent", latent=config)


def _logged(trainer: L.Trainer, key: str) -> list[tuple[int, float]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(f) if row.get(key)]


def test_latent_sft_lowers_the_loss_in_a_plain_trainer(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = _reasoner(word_tokenizer)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=256, n_val=8, batch_size=32)
    module = LatentSFT(reasoner, addition_task, curriculum=False, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5))
    examples = data.splits["train"][:32]
    batch = module.objective.batch(examples, [CONFIG.final_stage] * len(examples))
    before = module.loss(batch).item()
    _trainer(tmp_path, max_steps=40, limit_val_batches=0).fit(module, data)
    after = module.loss(batch).item()
    assert after < 0.6 * before, (before, after)


def test_stages_advance_every_n_steps_and_are_logged(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = _reasoner(word_tokenizer)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=64, n_val=4, batch_size=8)
    module = LatentSFT(reasoner, addition_task, steps_per_stage=2, optimizer=WARMUP_1)
    seen = []
    original = module.objective.batch
    module.objective.batch = lambda examples, stages: seen.append(list(stages)) or original(examples, stages)
    trainer = _trainer(tmp_path, max_steps=8, limit_val_batches=0)
    trainer.fit(module, data)
    assert [stage for _, stage in _logged(trainer, "train/stage")] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [stages[0] for stages in seen] == [0, 0, 1, 1, 2, 2, 3, 3]  # the batches were tokenized at that stage
    assert reasoner.stage == CONFIG.final_stage  # inference follows the curriculum


def test_stages_advance_every_n_epochs(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = _reasoner(word_tokenizer)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=16, n_val=4, batch_size=8)
    module = LatentSFT(reasoner, addition_task, epochs_per_stage=1, optimizer=WARMUP_1)
    trainer = _trainer(tmp_path, max_epochs=3, limit_val_batches=0)
    trainer.fit(module, data)
    assert [stage for _, stage in _logged(trainer, "train/stage")] == [0, 0, 1, 1, 2, 2]


def test_the_optimizer_state_is_cleared_when_the_stage_changes(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = _reasoner(word_tokenizer)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=64, n_val=4, batch_size=8)
    module = LatentSFT(reasoner, addition_task, steps_per_stage=3, optimizer=WARMUP_1)
    trainer = _trainer(tmp_path, max_steps=7, limit_val_batches=0)
    trainer.fit(module, data)
    # stages 0,0,0,1,1,1,2: the state was cleared before step 7, so AdamW counts one step, not seven.
    state = trainer.optimizers[0].state
    parameter = reasoner.model.get_input_embeddings().weight
    assert int(state[parameter]["step"]) == 1
    steady = LatentSFT(_reasoner(word_tokenizer), addition_task, curriculum=False, optimizer=WARMUP_1)
    steady_trainer = _trainer(tmp_path, max_steps=7, limit_val_batches=0)
    steady_trainer.fit(steady, data)
    assert int(steady_trainer.optimizers[0].state[steady.model.get_input_embeddings().weight]["step"]) == 7


def test_validation_logs_accuracy_of_a_latent_reasoner(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = _reasoner(word_tokenizer)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=32, n_val=6, n_test=3, batch_size=8,
                                               eval_batch_size=3)
    module = LatentSFT(reasoner, addition_task, steps_per_stage=2, optimizer=WARMUP_1,
                       eval_sampling=SamplingConfig(max_new_tokens=12))
    trainer = _trainer(tmp_path, max_steps=4, val_check_interval=4)
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    for key in ("val/loss", "val/accuracy", "val/accuracy_ci_low", "val/accuracy_ci_high", "val/tokens_generated"):
        assert key in metrics, key
    assert metrics["val/stage"] == 1  # validated at the stage just trained (steps 3 and 4), as Coconut does
    assert CONFIG.num_thoughts(1) < metrics["val/tokens_generated"] <= CONFIG.num_thoughts(1) + 12
    test = trainer.test(module, data, verbose=False)[0]
    assert 0.0 <= test["test/accuracy"] <= 1.0


def test_training_batches_are_bot_aligned_and_train_only_on_what_the_model_writes(word_tokenizer, addition_task):
    reasoner = _reasoner(word_tokenizer)
    module = LatentSFT(reasoner, addition_task, steps_per_stage=1)
    examples = [addition_task.generate(random.Random(seed)) for seed in range(3)]
    batch = module.objective.batch(examples, [0, 1, 3])
    bot = (batch["input_ids"] == reasoner.latent_start_id).int().argmax(1)
    assert len(set(bot.tolist())) == 1
    assert (batch["input_ids"] == reasoner.latent_token_id).sum(1).tolist() == [0, 1, 2]
    _, weights = module.objective.mask.apply(batch["input_ids"], batch["roles"])
    trained = weights > 0
    assert trained.eq((batch["roles"] == Role.TRACE) | (batch["roles"] == Role.ANSWER)).all()
    assert not trained[batch["roles"] == Role.LATENT].any()


def test_stage_mixing_draws_each_rows_stage_from_its_steps(word_tokenizer, addition_task):
    reasoner = _reasoner(word_tokenizer, config=LatentConfig(thoughts_per_step=1, max_stage=1, step_separator=" ; "))
    module = LatentSFT(reasoner, addition_task, steps_per_stage=1, mix_prob=1.0)
    example = addition_task.generate(random.Random(0))  # 2 steps: draws 0, 1 or 2, and 2 > max_stage is final
    assert {module.schedule.row_stage(example, 0, module._rng) for _ in range(200)} == {0, 1, 2}
    unmixed = LatentSFT(reasoner, addition_task, steps_per_stage=1)
    assert {unmixed.schedule.row_stage(example, 1, unmixed._rng) for _ in range(50)} == {1}


def _spy_on_stages(module: LatentSFT) -> list[list[int]]:
    """Record the stages every `staged_batch` call tokenizes at."""
    seen = []
    original = module.objective.batch
    module.objective.batch = lambda examples, stages: seen.append(list(stages)) or original(examples, stages)
    return seen


def test_stage_mixing_reaches_about_mix_prob_of_the_training_rows(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = _reasoner(word_tokenizer)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize,
                                         pad_token_id=reasoner.tokenizer.pad_token_id, n_train=128, n_val=4,
                                         batch_size=32)
    # Scheduled: the final stage 3. Every row has 2 steps, so a mixed row draws 0, 1 or 2, never 3.
    module = LatentSFT(reasoner, addition_task, curriculum=False, mix_prob=0.5, optimizer=WARMUP_1)
    seen = _spy_on_stages(module)
    slots_trained_on = []
    original_loss = module.loss

    def loss(batch):
        slots_trained_on.extend((batch["input_ids"] == reasoner.latent_token_id).sum(1).tolist())
        return original_loss(batch)

    module.loss = loss
    _trainer(tmp_path, max_steps=8, limit_val_batches=0).fit(module, data)
    stages = [stage for batch in seen for stage in batch]
    assert len(stages) == 8 * 32
    mixed = sum(stage != CONFIG.final_stage for stage in stages) / len(stages)
    assert 0.4 < mixed < 0.6, mixed  # 256 rows at p = 0.5: the standard deviation is 0.03
    assert set(stages) == {0, 1, 2, CONFIG.final_stage}
    # The mixed rows are what training saw: 0 and 1 thoughts (stages 0 and 1) beside the final stage's 2.
    assert len(slots_trained_on) == len(stages)
    assert [slots_trained_on.count(k) for k in (0, 1)] == [stages.count(0), stages.count(1)]
    assert slots_trained_on.count(2) == stages.count(2) + stages.count(CONFIG.final_stage)


def test_stage_mixing_has_its_own_seeded_generator_that_resumes_from_a_checkpoint(
    word_tokenizer, addition_task, tmp_path
):
    def fit(max_steps: int, *, seed: int = 0, resume: Path | None = None, save: Path | None = None):
        L.seed_everything(0)
        reasoner = _reasoner(word_tokenizer)
        data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=64, n_val=4, batch_size=8)
        module = LatentSFT(reasoner, addition_task, curriculum=False, mix_prob=0.5, seed=seed, optimizer=WARMUP_1)
        seen = _spy_on_stages(module)
        random.seed(max_steps)  # the global generator is not the one that mixes
        trainer = _trainer(tmp_path, max_steps=max_steps, limit_val_batches=0)
        trainer.fit(module, data, ckpt_path=resume)  # torch's safe unpickler reads the hyperparameters
        if save is not None:
            trainer.save_checkpoint(save)
        return seen

    uninterrupted = fit(4)
    assert fit(4, seed=1) != uninterrupted
    first_half = fit(2, save=tmp_path / "half.ckpt")
    second_half = fit(4, resume=tmp_path / "half.ckpt")
    assert first_half + second_half == uninterrupted


def test_pause_as_thought_and_the_projection_train(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    pause = _reasoner(word_tokenizer, config=LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ",
                                                         thought="pause"))
    data = ReasoningDataModule.from_task(addition_task, pause.tokenize,
                                         pad_token_id=pause.tokenizer.pad_token_id, n_train=32, n_val=4, batch_size=8)
    _trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(LatentSFT(pause, addition_task, steps_per_stage=1), data)
    projected = _reasoner(word_tokenizer, config=LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ",
                                                             projection=True))
    module = LatentSFT(projected, addition_task, curriculum=False, optimizer=WARMUP_1)
    _trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(module, data)
    assert not torch.equal(projected.projection.weight, torch.eye(projected.projection.in_features))


def test_step_validity_judges_written_steps_after_the_replaced_ones(word_tokenizer, addition_task):
    reasoner = _reasoner(word_tokenizer)
    module = LatentSFT(reasoner, addition_task, steps_per_stage=1)
    example = addition_task.generate(random.Random(0))
    reasoner.stage = 1
    assert module._step_verdicts(example, example.steps[1]) == [True]
    assert module._step_verdicts(example, example.steps[0]) == [False]  # the first step again is not the second
    assert module._step_verdicts(example, "") == []
    reasoner.stage = 0
    assert module._step_verdicts(example, " ; ".join(example.steps)) == [True, True]


def test_bad_configurations_are_named(word_tokenizer, addition_task, tmp_path):
    latent = _reasoner(word_tokenizer)
    with pytest.raises(ValueError, match="'latent'-mode reasoner"):
        LatentSFT(Reasoner(latent.model, word_tokenizer, "cot"), steps_per_stage=1)
    with pytest.raises(ValueError, match="exactly one stage length"):
        LatentSFT(latent)
    with pytest.raises(ValueError, match="exactly one stage length"):
        LatentSFT(latent, epochs_per_stage=1, steps_per_stage=1)
    with pytest.raises(ValueError, match="curriculum=False"):
        LatentSFT(latent, curriculum=False, steps_per_stage=1)
    with pytest.raises(ValueError, match="steps_per_stage must be >= 1"):
        LatentSFT(latent, steps_per_stage=0)
    with pytest.raises(ValueError, match="mix_prob must be in"):
        LatentSFT(latent, steps_per_stage=1, mix_prob=1.5)
    with pytest.raises(TypeError, match="mask"):  # it always trains on the remaining steps and the answer
        LatentSFT(latent, steps_per_stage=1, mask="mask_trace")


def test_schedules_that_do_not_fit_the_data_fail_before_training(word_tokenizer, addition_task, tmp_path):
    too_deep = _reasoner(word_tokenizer, config=LatentConfig(thoughts_per_step=1, max_stage=3, step_separator=" ; "))
    data = ReasoningDataModule.from_task(addition_task, too_deep.tokenize,
                                         pad_token_id=too_deep.tokenizer.pad_token_id, n_train=16, n_val=2,
                                         batch_size=8)
    with pytest.raises(ValueError, match="max_stage=3 but the longest training trace has 2 steps"):
        _trainer(tmp_path, max_steps=1).fit(LatentSFT(too_deep, addition_task, steps_per_stage=1), data)
    reasoner = _reasoner(word_tokenizer)
    split = data.splits["train"]
    unsplit = [Example(e.prompt, e.trace, e.answer) for e in split]
    data = ReasoningDataModule(reasoner.tokenize, unsplit, unsplit[:2],
                               pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=8)
    with pytest.raises(ValueError, match="training example 0 .* has a trace but no `steps`"):
        _trainer(tmp_path, max_steps=1).fit(LatentSFT(reasoner, addition_task, steps_per_stage=1), data)
    # without a curriculum the final stage needs no steps
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(LatentSFT(reasoner, addition_task, curriculum=False), data)
    # an empty trace is zero steps, not an unsplit trace: the curriculum trains on it
    with_empty = [*split[:7], replace(split[7], trace="", steps=())]
    data = ReasoningDataModule(reasoner.tokenize, with_empty, split[:2],
                               pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=8)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(LatentSFT(reasoner, addition_task, steps_per_stage=1), data)
    assert trainer.global_step == 1


def test_token_level_regimes_refuse_a_latent_reasoner(word_tokenizer, addition_task):
    from framework.regimes import SFT

    with pytest.raises(ValueError, match="use framework.regimes.LatentSFT"):
        SFT(_reasoner(word_tokenizer), addition_task)


def test_the_thought_projection_is_not_decayed_towards_zero(word_tokenizer, addition_task, tmp_path):
    reasoner = _reasoner(word_tokenizer, config=LatentConfig(max_stage=2, step_separator=" ; ", projection=True))
    module = LatentSFT(reasoner, addition_task, curriculum=False, optimizer=OptimizerConfig(weight_decay=0.1))
    module.trainer = _trainer(tmp_path, max_steps=1)
    decayed = {id(p) for group in module.configure_optimizers()["optimizer"].param_groups if group["weight_decay"] > 0
               for p in group["params"]}
    assert id(reasoner.projection.weight) not in decayed
    assert id(reasoner.model.get_input_embeddings().weight) in decayed
