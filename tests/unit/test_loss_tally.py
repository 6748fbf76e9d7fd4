"""The training-loss tally kept through public hooks (`training_step`, `log`, a callback): a run
resumed from a checkpoint logs the same losses and reports the same whole-run mean as an
uninterrupted one, whichever way its callback states come back; the checkpoint holds the figures
of its own step; and the tally never reaches into the Trainer's private loss state."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.training.safety import TrainLossTally
from ptft_hf.training.trainer import PtftTrainer

STEPS, LOG_EVERY, SAVE_EVERY = 8, 4, 3  # checkpoints at 3 and 6; log lines at 4 and 8


def _trainer(out, restore_callbacks=False):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    blocks = torch.randint(0, 50, (2 * STEPS, 8), generator=torch.Generator().manual_seed(1))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, max_steps=STEPS, learning_rate=1e-2,
                             logging_steps=LOG_EVERY, save_steps=SAVE_EVERY, save_strategy="steps",
                             train_sampling_strategy="sequential", report_to="none", use_cpu=True, disable_tqdm=True,
                             restore_callback_states_from_checkpoint=restore_callbacks)
    return PtftTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks.tolist()}),
                       data_collator=CausalLMCollator())


def _losses(trainer):
    return {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    trainer = _trainer(out)
    output = trainer.train()
    return {"out": out, "train_loss": output.training_loss, "losses": _losses(trainer),
            "summary": next(r["train_loss"] for r in trainer.state.log_history if "train_loss" in r)}


def _saved_tally(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["TrainLossTally"]["args"]


def test_a_checkpoint_holds_the_tally_of_its_step(uninterrupted):
    three, six = _saved_tally(uninterrupted["out"] / "checkpoint-3"), _saved_tally(uninterrupted["out"] / "checkpoint-6")
    # at 3 nothing is logged yet; at 6 the line of step 4 is, and steps 5 and 6 are pending
    assert three["loss_sum"] == 0.0 and three["last_logged_step"] == 0 and three["steps"] == 3
    assert six["steps"] == 6 and six["last_logged_step"] == 4
    assert six["loss_sum"] == pytest.approx(4 * uninterrupted["losses"][4], rel=1e-6)
    assert three["pending_loss"] > 0 and six["pending_loss"] > 0


@pytest.mark.parametrize("checkpoint", [3, 6])
@pytest.mark.parametrize("restore_callbacks", [False, True], ids=["tally-read-by-ptft", "tally-restored-by-trainer"])
def test_a_resumed_run_logs_and_reports_what_an_uninterrupted_one_does(uninterrupted, tmp_path, checkpoint,
                                                                        restore_callbacks):
    trainer = _trainer(uninterrupted["out"], restore_callbacks)
    trainer.args.output_dir = str(tmp_path)  # checkpoints of the resumed run go elsewhere
    output = trainer.train(resume_from_checkpoint=str(uninterrupted["out"] / f"checkpoint-{checkpoint}"))
    logged = _losses(trainer)
    # the first line after resuming averages the steps before the checkpoint too, as the uninterrupted run's does
    assert logged == pytest.approx(uninterrupted["losses"], rel=1e-6)
    assert output.training_loss == pytest.approx(uninterrupted["train_loss"], rel=1e-6)
    summary = next(r["train_loss"] for r in trainer.state.log_history if "train_loss" in r)
    assert summary == pytest.approx(uninterrupted["summary"], rel=1e-6)
    tallies = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainLossTally)]
    assert len(tallies) == 1  # restored in place of the fresh one, not beside it
    saved = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert saved == (["checkpoint-6", "checkpoint-8"] if checkpoint == 3 else ["checkpoint-8"])
    for name in saved:  # the same figures as the uninterrupted run's checkpoint of that step
        assert _saved_tally(tmp_path / name) == pytest.approx(_saved_tally(uninterrupted["out"] / name), rel=1e-6)


def test_a_fresh_train_call_carries_nothing_from_an_earlier_one(uninterrupted, tmp_path):
    trainer = _trainer(tmp_path)
    first = trainer.train()
    second = trainer.train()  # from scratch again (the model trained on): its own mean, nothing carried
    tally = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainLossTally))
    assert tally.carried_steps == 0 and tally.carried_sum == 0.0
    assert first.training_loss == pytest.approx(uninterrupted["train_loss"], rel=1e-6)
    assert second.training_loss != pytest.approx(first.training_loss, rel=1e-3)
