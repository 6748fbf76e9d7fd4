"""The Python API in-process, as a notebook uses it: compose (twice, as a re-run cell does), run,
read the run back, refuse a finished folder, and TensorBoard event files written offline."""

from __future__ import annotations

import pytest
import torch

import ptft_hf
from ptft_hf.errors import UserError
from tests.conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_compose_run_open_and_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="trainer.report_to=tensorboard needs the tensorboard package")
    monkeypatch.setenv("PTFT_HF_CACHE", str(tmp_path / "cache"))
    overrides = [*TINY_OVERRIDES, "data.max_train_samples=300", "trainer.max_steps=10", "trainer.eval_steps=5",
                 "trainer.save_steps=10", "trainer.report_to=tensorboard"]
    ptft_hf.compose(*overrides)
    experiment = ptft_hf.compose(*overrides)  # a re-run cell composes again without Hydra complaining
    assert experiment.cfg.trainer.max_steps == 10 and not experiment.is_pipeline

    result = experiment.run(tmp_path / "run")
    assert result.metrics["train_steps"] == 10
    assert [r["step"] for r in result.log() if "eval_loss" in r][:3] == [0, 5, 10]  # before, during, end
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert not list((tmp_path / "run" / "checkpoints").glob("runs"))  # not buried in checkpoints/

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in scalars and "eval/loss" in scalars

    reopened = ptft_hf.open_run(tmp_path / "run")
    assert reopened.metrics["eval_loss"] == result.metrics["eval_loss"]
    # the prompt and exactly the model's greedy continuation: 3 tokens chosen by hand, argmax after argmax
    # (end-of-text barred, as min_new_tokens bars it, so the continuation cannot stop early)
    text = reopened.generate("def ", max_new_tokens=3, min_new_tokens=3)
    model, tokenizer = reopened.load()
    ids = tokenizer("def ", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(3):
            logits = model(ids).logits[0, -1]
            logits[tokenizer.eos_token_id] = float("-inf")
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    assert text.startswith("def ") and len(text) > len("def ")
    assert text == tokenizer.decode(ids[0], skip_special_tokens=True)
    with pytest.raises(UserError, match="run_dir: .* already holds a finished run"):
        experiment.run(tmp_path / "run")
