"""Trainer callbacks: a JSON-lines training log and generated samples at each evaluation."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import LogitsProcessorList, TrainerCallback
from transformers.trainer_callback import ExportableState

from ptft_hf.config.schema import SamplesConfig
from ptft_hf.distributed import weights_are_sharded
from ptft_hf.training.generation import SparingRepetitionPenalty, stop_token_ids

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogCallback(TrainerCallback):
    """Appends every Trainer log record (train loss, eval metrics, ...) to `train_log.jsonl`.

    An evaluation's record names its split (`split`): `validation` during training (what the
    Trainer chooses on), `test` for the recipe's scoring before and after (`evaluating_split`).
    `before_training=False` (a resumed run, whose log already holds them): records logged before
    training starts are not written again."""

    def __init__(self, path: str | Path, before_training: bool = True):
        self.path = Path(path)
        self.start = time.time()
        self.active = before_training
        self.split = "validation"

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102 (Trainer hook)
        self.active = True

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 (Trainer hook)
        if not state.is_world_process_zero or not logs or not self.active:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.time() - self.start, 3)}
        record.update({k: _jsonable(v) for k, v in logs.items()})
        if any(k.startswith(("eval_", "validation_")) for k in logs):
            record["split"] = "validation" if any(k.startswith("validation_") for k in logs) else self.split
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def evaluating_split(trainer: Any, split: str) -> Iterator[None]:
    """Evaluations inside are logged to train_log.jsonl as `split` (e.g. the test split the recipe
    scores before and after training, outside the Trainer's own validation evaluations)."""
    loggers = [c for c in trainer.callback_handler.callbacks if isinstance(c, JsonlLogCallback)]
    for logger in loggers:
        logger.split = split
    try:
        yield
    finally:
        for logger in loggers:
            logger.split = "validation"


@torch.no_grad()
def generate_samples(model: Any, tokenizer: Any, cfg: SamplesConfig,
                     format_prompt: Callable[[str], str] | None = None) -> list[dict[str, str]]:
    """Continue each configured prompt (rendered by `format_prompt`, e.g. a chat template);
    greedy unless `samples.do_sample`. Generation stops at the model's stop tokens (EOS, and the
    end-of-turn token after SFT)."""
    was_training = model.training
    model.eval()
    results = []
    device = next(model.parameters()).device
    stop = stop_token_ids(model, tokenizer)
    synced = weights_are_sharded()  # every rank generates, stepping together until the longest is done
    for prompt in cfg.prompts:
        text = format_prompt(prompt) if format_prompt else prompt
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        output = model.generate(
            **inputs,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature if cfg.do_sample else None,
            top_k=cfg.top_k if cfg.do_sample else None,
            # the penalty spares the stop tokens: a chat prompt holds the end-of-turn token already
            logits_processor=LogitsProcessorList([SparingRepetitionPenalty(cfg.repetition_penalty, stop)])
            if cfg.repetition_penalty != 1.0 else None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0],
            eos_token_id=stop,
            synced_gpus=synced,
        )
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        results.append({"prompt": prompt, "completion": tokenizer.decode(new_tokens, skip_special_tokens=True)})
    if was_training:
        model.train()
    return results


class SampleCallback(TrainerCallback):
    """Writes continuations of fixed prompts to `samples.jsonl` at every evaluation (from the start
    of training only when `before_training=False`, as for `JsonlLogCallback`)."""

    def __init__(self, tokenizer: Any, cfg: SamplesConfig, path: str | Path,
                 format_prompt: Callable[[str], str] | None = None, before_training: bool = True):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.path = Path(path)
        self.format_prompt = format_prompt
        self.active = before_training

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102 (Trainer hook)
        self.active = True

    def on_evaluate(self, args, state, control, model=None, **kwargs):  # noqa: D102 (Trainer hook)
        if model is None or not self.cfg.prompts or not self.active:
            return
        if not state.is_world_process_zero and not weights_are_sharded():
            return
        samples = generate_samples(model, self.tokenizer, self.cfg, self.format_prompt)  # sharded: every rank
        if not state.is_world_process_zero:
            return
        with self.path.open("a", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps({"step": state.global_step, **sample}) + "\n")
        log.info("sample at step %d: %r -> %r", state.global_step, samples[0]["prompt"], samples[0]["completion"])


def tensorboard_callback(log_dir: Path) -> TrainerCallback:
    """transformers' TensorBoard logger writing to `log_dir` (offline: plain event files).

    Its writer closes at the end of training and reopens for the final evaluation, so a run
    holds two event files; `tensorboard --logdir <run>/tensorboard` reads both.
    """
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(log_dir)
    return callback


class PrecisionRecord(TrainerCallback, ExportableState):
    """Saves the precision the run trains in (`trainer.bf16=auto` resolved) with every checkpoint's
    `trainer_state.json`, so that a resumed run keeps it (`training.precision.resume_precision`)."""

    def __init__(self, bf16: bool = False):
        self.bf16 = bool(bf16)

    def state(self) -> dict:
        return {"args": {"bf16": self.bf16}, "attributes": {}}
