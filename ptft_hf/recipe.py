"""run(cfg) -> metrics: the readable top-level story of one run, one named step each.

set up (refuse to overwrite a finished run, check every group, find the checkpoint to resume from,
load text, tokenizer, model and strategy, then start writing the folder), evaluate before, train,
evaluate after, save (model through a staging folder), report (metrics, plot, report.md, card),
publish (with hub.push or hub.dry_run).

Three splits: training evaluates on the validation split only (the Trainer's `eval_dataset`: the
best checkpoint, early stopping and any choice read it); the test split (data.eval_*) is scored by
`evaluate` before training (a measurement of the starting point, no choice depends on it) and once
after. metrics.json keeps `eval_*` for the test split and adds `validation_*` and the split sizes.

Nothing is written into the run folder before `set_up` has loaded the data and the model, so a
mistake found there leaves an earlier run in the folder as it was (see `ptft_hf.run_dir`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from ptft_hf.checks import validate
from ptft_hf.config.fingerprint import config_fingerprint
from ptft_hf.config.redact import redact, redact_file, secret_values
from ptft_hf.config.schema import DataConfig, HubConfig, ModelConfig, PtftConfig, set_trainer_fields
from ptft_hf.data.sources import TextSplits, add_replay, load_text_splits, load_text_stream
from ptft_hf.data.streaming import MixedStream
from ptft_hf.data.tokenizer_texts import tokenizer_texts
from ptft_hf.distributed import is_main_process, main_process_first, wait_for_everyone, weights_are_sharded
from ptft_hf.errors import UserError
from ptft_hf.hub.card import write_card
from ptft_hf.hub.lineage import ADAPTER, FULL
from ptft_hf.models.loading import count_parameters, load_tokenizer
from ptft_hf.objectives import Objective, Prepared, get_objective
from ptft_hf.run_dir import (FINISHED_MARKER, checkpoint_step, discard_aside, guard_run_dir, latest_checkpoint,
                             resume_checkpoint, start_writing)
from ptft_hf.strategies import get_strategy, strategy_class
from ptft_hf.tracking import track_run
from ptft_hf.training.build import build_trainer, prompt_formatter
from ptft_hf.training.callbacks import SampleCallback, evaluating_split, generate_samples
from ptft_hf.training.cost import reset_peak_memory
from ptft_hf.training.dtypes import apply_dtype_plan
from ptft_hf.training.low_memory_loading import low_memory_loading
from ptft_hf.training.progress import Progress, logged_losses, training_progress
from ptft_hf.training.report import (TEST_PREDICTIONS, baseline_comparison, baseline_verdict, beats_baseline, plot_loss,
                                     write_report)
from ptft_hf.training.run_metrics import Evaluation, Throughput, run_metrics, train_tokens
from ptft_hf.training.safety import Interrupted, NonFiniteLoss, StopOnSignal
from ptft_hf.training.saving import save_model
from ptft_hf.training.significance import EvalOutcome
from ptft_hf.training.trainer import PtftTrainer

log = logging.getLogger(__name__)

__all__ = ["build_trainer", "run"]


def run(cfg: DictConfig, run_dir: str | Path, references: Mapping[str, DataConfig] | None = None,
        lineage: Mapping[str, Any] | None = None, track: bool = True) -> dict[str, Any]:
    """Train and evaluate one configured run in `run_dir`; returns the metrics written there.

    `references`: other data sets whose eval perplexity is measured before and after training
    (the pipeline passes the pretraining corpus here). `lineage`: where the base model came
    from, recorded in the metrics. `track`: log the finished run to `tracking` (a pipeline logs
    its stages itself, as runs of its project).
    """
    started = time.time()
    setup = set_up(cfg, Path(run_dir), dict(references or {}))
    trainer = build_trainer(setup.conf, setup.run_dir, setup.tokenizer, setup.prepared, [setup.stop],
                            resuming=setup.resume_from is not None, resume_from=setup.resume_from)
    before, references_before, _ = evaluate(trainer, setup.prepared)
    evaluation = Evaluation(before, references_before=references_before, reference_names=list(setup.prepared.references))
    result, train_wall = train(trainer, setup)
    evaluation.after, evaluation.references_after, outcome = evaluate(trainer, setup.prepared)
    evaluation.validation = evaluate_validation(trainer, setup.prepared)
    evaluation.after.update(evaluate_objective(trainer, setup))
    metrics = measure(setup, trainer, result, train_wall, evaluation, dict(lineage or {}), outcome)
    save_model(trainer, setup.tokenizer, setup.run_dir / "model", head_config=setup.objective.classifies)
    samples = generate_after(trainer, setup)
    report(setup, trainer, metrics, samples, started, outcome)
    publish(setup, trainer)
    evaluate_tasks(setup, trainer)  # after publish: a bfloat16 evaluation casts the model in memory
    if track and trainer.is_world_process_zero():  # the experiment store, from the finished folder
        track_run(setup.run_dir, setup.cfg.tracking)
    wait_for_everyone()  # several processes: the folder is complete before any rank reads it (a next stage)
    return metrics


@dataclass
class RunSetup:
    """What `set_up` built: the config as composed and as objects, the run's parts, its secrets."""

    cfg: DictConfig
    conf: PtftConfig
    run_dir: Path
    objective: Objective
    resume_from: Path | None
    tokenizer: Any
    strategy: Any
    prepared: Prepared
    params: dict[str, Any]
    secrets: list[str] = field(default_factory=list)
    stop: StopOnSignal = field(default_factory=StopOnSignal)


def set_up(cfg: DictConfig, run_dir: Path, references: dict[str, DataConfig]) -> RunSetup:
    """Refuse a finished run folder, check every group, load data, tokenizer, model and strategy,
    then (rank 0) start writing the folder: a replaced run set aside, the resolved config written."""
    reset_peak_memory()
    guard_run_dir(run_dir, bool(cfg.overwrite), pipeline=False)  # a single run: a finished pipeline folder too
    validate(cfg)
    conf: PtftConfig = OmegaConf.to_object(cfg)
    objective = get_objective(conf.objective.name)
    check_eval_request(conf, objective)
    resume_from = resume_checkpoint(run_dir, getattr(conf.trainer, "resume_from_checkpoint", None))
    set_seed(conf.seed)
    apply_dtype_plan(conf, resume_from)  # model.dtype: auto -> float32 / the checkpoint's own, with the reason logged
    adapter = strategy_class(conf.strategy.name).saves_adapter_only
    # several processes: rank 0 fills the caches, the others read them; FSDP: no rank reads the whole checkpoint
    reads_checkpoint = bool(conf.model.name_or_path) and not conf.model.random_init
    with main_process_first(), low_memory_loading(vars(conf.trainer), objective.classifies, adapter, reads_checkpoint):
        splits = load_splits(conf, objective, references)
        tokenizer = run_tokenizer(conf, splits, resume_from)
        strategy = get_strategy(conf.strategy)
        prepared = objective.prepare(conf, splits, tokenizer, strategy, references)
    prepared.metrics["data_splits"] = splits.sizes()  # documents in train / validation / test
    params = count_parameters(prepared.model)
    log.info("model %s, objective %s, strategy %s: %d parameters, %d trainable (%.4f%%)", conf.model.name, conf.objective.name,
             conf.strategy.name, params["parameters"], params["trainable_parameters"], params["trainable_percent"])
    log.info("data: %s", {k: v for k, v in prepared.metrics.items() if k.startswith("data_")})
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if is_main_process():  # the run folder is rank 0's to write
        start_writing(run_dir, _resolved_config(resolved), resume_from)
    wait_for_everyone()
    return RunSetup(cfg, conf, run_dir, objective, resume_from, tokenizer, strategy, prepared, params, secret_values(resolved))


def load_splits(conf: PtftConfig, objective: Objective, references: Mapping[str, DataConfig]) -> TextSplits:
    """The training and eval texts (a stream, with data.streaming) and the run's mixture, replayed
    base data added to it (`data.replay`)."""
    if conf.data.streaming:
        splits = load_text_stream(conf.data, conf.seed)
        log.info("data %s: streamed train documents / %d validation / %d test documents", conf.data.name,
                 len(splits["validation"]), len(splits["eval"]))
        return splits
    splits = load_text_splits(conf.data, conf.seed, chat=objective.reads_chat)
    log.info("data %s: %d train / %d validation / %d test documents", conf.data.name, len(splits["train"]),
             len(splits["validation"]), len(splits["eval"]))
    return add_replay(conf, splits, references) if conf.data.replay else splits


def run_tokenizer(conf: PtftConfig, splits: Any, resume_from: Path | None) -> Any:
    """The configured tokenizer (trained on the run's texts when asked); resuming a run that trained
    its own, the one the checkpoint was trained with."""
    if resume_from is not None and conf.model.tokenizer.train:
        return load_tokenizer(ModelConfig(name_or_path=str(resume_from)))
    return load_tokenizer(conf.model, tokenizer_texts(splits, conf))


def _resolved_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config, trainer pruned to the TrainingArguments fields the run sets, secrets
    (tokens, passwords, keys) replaced by "***"."""
    resolved = {**resolved, "trainer": set_trainer_fields(resolved["trainer"])}
    return redact(resolved, secret_values(resolved))


def evaluate(trainer: PtftTrainer, prepared: Prepared) -> tuple[dict[str, float], dict[str, float], EvalOutcome]:
    """The run's test split (data.eval_*; `eval_*` figures), and the reference sets (e.g. general text);
    what the test evaluation left per example (a classifier's predictions, an LM's per-block losses)."""
    with evaluating_split(trainer, "test"):
        test = trainer.evaluate(prepared.eval_dataset)
        outcome = test_outcome(trainer, prepared)  # before the reference sets' evaluation replaces it
        return test, trainer.evaluate(prepared.references) if prepared.references else {}, outcome


def test_outcome(trainer: PtftTrainer, prepared: Prepared) -> EvalOutcome:
    """The last evaluation's per-example record: the labels and predictions the classification
    metrics kept, or the per-block losses of the token-metrics loop."""
    last = getattr(prepared.compute_metrics, "last", None)
    if last is not None:
        return EvalOutcome(labels=last[0], predictions=last[1])
    blocks = getattr(trainer, "last_eval_blocks", None)
    return EvalOutcome(block_loss=blocks[0], block_tokens=blocks[1]) if blocks else EvalOutcome()


def evaluate_validation(trainer: PtftTrainer, prepared: Prepared) -> dict[str, float]:
    """The validation split after training (`validation_*` figures: the model training ended with,
    or chose, on the data it chose on). No samples are generated for it: the test evaluation did."""
    if prepared.validation_dataset is None:
        return {}
    muted = [c for c in trainer.callback_handler.callbacks if isinstance(c, SampleCallback)]
    for callback in muted:
        trainer.remove_callback(callback)
    try:
        return trainer.evaluate(metric_key_prefix="validation")
    finally:
        for callback in muted:
            trainer.add_callback(callback)


def train(trainer: PtftTrainer, run: RunSetup) -> tuple[Any, float]:
    """Train (resuming when the folder holds an unfinished run); a non-finite loss or a signal ends
    the run with a message naming the last good checkpoint. Returns the result and the wall time."""
    started = time.time()
    try:
        with run.stop.handling_signals():
            result = trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    except NonFiniteLoss as err:
        last = latest_checkpoint(run.run_dir)
        raise UserError.of("training", str(err),
                           f"lower trainer.learning_rate (now {trainer.args.learning_rate:g}) or raise trainer.warmup_steps; "
                           f"nothing from step {err.step} was saved (last good checkpoint: {last or 'none yet'})") from err
    if run.stop.signum is not None:
        checkpoint = latest_checkpoint(run.run_dir)
        raise Interrupted(run.stop.signum, result.global_step, str(checkpoint) if checkpoint else None)
    return result, time.time() - started


def _takes_part(trainer: PtftTrainer) -> bool:
    """Rank 0; under FSDP / ZeRO-3 every rank takes part in generation and saving."""
    return trainer.is_world_process_zero() or weights_are_sharded()


def evaluate_objective(trainer: PtftTrainer, run: RunSetup) -> dict[str, Any]:
    """The objective's own evaluation after training (SFT's exact match, ...)."""
    if not _takes_part(trainer):
        return {}
    predictions = run.run_dir / "predictions.jsonl" if trainer.is_world_process_zero() else None
    return run.objective.evaluate_after(run.prepared.model, run.tokenizer, run.prepared, run.conf, predictions)


def measure(run: RunSetup, trainer: PtftTrainer, result: Any, train_wall: float, evaluation: Evaluation,
            lineage: dict[str, Any], outcome: EvalOutcome | None = None) -> dict[str, Any]:
    """The run's metrics record (see `training.run_metrics`), with the test figures' intervals, the
    verdict against its baseline (beyond chance: the interval clear of it) and how far training got."""
    conf, prepared, args, steps = run.conf, run.prepared, trainer.args, result.global_step
    tokens = train_tokens(prepared, args, steps)
    if isinstance(prepared.train_dataset, MixedStream):  # the shares of what was trained (every rank mixes alike)
        prepared.metrics["data_mixture"] = {
            name: {**share, "blocks": share["blocks"] * args.world_size}
            for name, share in prepared.train_dataset.shares_at(trainer.stream_blocks_trained(steps)).items()}
    resumed = checkpoint_step(run.resume_from) if run.resume_from else 0
    this_call = tokens * (steps - resumed) / max(steps, 1) if prepared.metrics.get("padding") is None else tokens
    throughput = Throughput(result.training_loss, steps, result.metrics.get("train_runtime"), train_wall, tokens, this_call,
                            resumed, "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32")
    identity = {"run_name": run.run_dir.name, "objective": conf.objective.name, "model": conf.model.name,
                "base_model": conf.model.name_or_path, "random_init": conf.model.random_init, "data": conf.data.name,
                "strategy": conf.strategy.name}
    extra = {"config_fingerprint": config_fingerprint(run.cfg), "vocab_size": len(run.tokenizer), "lineage": lineage}
    metrics = run_metrics(identity, evaluation, throughput, run.params, prepared.metrics,
                          passes=2 if trainer.rdrop_alpha else 1, extra=extra)
    metrics.update(outcome.intervals() if outcome is not None else {})
    metrics["beats_baseline"] = beats_baseline(metrics)  # None: no floor to compare with
    log.info("test figures against the baseline: %s", "; ".join(baseline_comparison(metrics)) or "no baseline")
    verdict = baseline_verdict(metrics)
    if verdict:
        log.warning("%s: check the learning rate, the steps and the data (metrics.json beats_baseline=false)", verdict)
    progress = run_progress(run, trainer, metrics)
    metrics["training_progress"] = progress.as_metrics()
    log.info("%s", progress.summary())
    for warning in progress.warnings(args.learning_rate):
        log.warning("%s", warning)
    return metrics


def run_progress(run: RunSetup, trainer: PtftTrainer, metrics: Mapping[str, Any]) -> Progress:
    """Epochs covered and the training loss's course against a uniform guess: ln(classes) for a
    classifier, ln(vocabulary) for a language model."""
    classes = metrics.get("num_labels") if run.objective.classifies else None
    outcomes = classes or (metrics.get("vocab_size") if run.objective.language_modelling else None)
    uniform = math.log(outcomes) if outcomes and outcomes > 1 else None
    return training_progress(logged_losses(trainer.state.log_history), float(trainer.state.epoch or 0.0), uniform)


def generate_after(trainer: PtftTrainer, run: RunSetup) -> list[dict[str, str]]:
    """Samples from the trained model for the configured prompts (objectives that generate)."""
    if not (run.prepared.generates and _takes_part(trainer)):
        return []
    return generate_samples(run.prepared.model, run.tokenizer, run.conf.samples, prompt_formatter(run.prepared, run.tokenizer))


def report(run: RunSetup, trainer: PtftTrainer, metrics: dict[str, Any], samples: list[dict[str, str]], started: float,
           outcome: EvalOutcome | None = None) -> None:
    """Rank 0 writes the plot, report.md, the model card, a classifier's per-example test
    predictions (`test_predictions.jsonl`, which the pipeline report pairs for McNemar's test) and,
    last, metrics.json (a finished run)."""
    run_dir, conf, model_dir = run.run_dir, run.conf, run.run_dir / "model"
    if trainer.is_world_process_zero():
        rows = outcome.prediction_rows() if outcome is not None else []
        if rows:
            (run_dir / TEST_PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        metrics["saved_bytes"] = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        metrics["sample"] = samples[0] if samples else None
        metrics["wall_time_s"] = round(time.time() - started, 2)
        plot_loss(run_dir / "train_log.jsonl", run_dir / "loss.png", title=f"{conf.model.name} on {conf.data.name}",
                  resumed_at=metrics.get("resumed_from_step") or None)
        redact_file(write_report(run_dir, metrics, samples), run.secrets)
        write_card(model_dir / "README.md", run_dir, ADAPTER if run.strategy.saves_adapter_only else FULL, conf.hub.repo_id,
                   redact(metrics, run.secrets))
        payload = json.dumps(redact(metrics, run.secrets), indent=2, sort_keys=True, default=str) + "\n"
        (run_dir / FINISHED_MARKER).write_text(payload, encoding="utf-8")  # last: its presence marks a finished run
        discard_aside(run_dir)  # a replaced earlier run, kept until now
    log.info("%s; run folder %s", ", ".join(f"{k} {metrics[k + '_before']:.4g} -> {metrics[k]:.4g}"
                                            for k in ("eval_perplexity", "eval_accuracy", "eval_f1") if k + "_before" in metrics), run_dir)


def _eval_request(conf: PtftConfig) -> Any:
    from ptft_hf.evaluation.record import EvalRequest

    e = conf.eval
    return EvalRequest(list(e.tasks), e.num_fewshot, e.limit, e.batch_size, e.data_root, e.dtype)


def check_eval_request(conf: PtftConfig, objective: Objective) -> None:
    """`eval.tasks` checked before training: unknown tasks, missing task files, a masked LM on a
    log-likelihood task (a classifier's run skips the evaluation: it has no LM head)."""
    if not conf.eval.tasks:
        return
    from ptft_hf.evaluation.checks import scoring_problems
    from ptft_hf.evaluation.task_files import task_problems

    request = _eval_request(conf)
    problems = task_problems(request.tasks, request.root, "eval.tasks")
    if objective.auto_class in ("AutoModelForCausalLM", "AutoModelForMaskedLM"):
        problems += scoring_problems(objective.auto_class, request.tasks, "eval.tasks")
    if problems:
        raise UserError(problems)


def evaluate_tasks(run: RunSetup, trainer: PtftTrainer) -> None:
    """With `eval.tasks`: lm-evaluation-harness on the trained model in memory, eval.json in the run folder."""
    if not run.conf.eval.tasks or not trainer.is_world_process_zero():
        return
    if run.objective.auto_class not in ("AutoModelForCausalLM", "AutoModelForMaskedLM"):
        log.info("eval.tasks: %s has no language-modelling head to score; skipped", run.conf.objective.name)
        return
    from ptft_hf.evaluation.record import score_model

    model = run.prepared.model
    training_mode = model.training
    score_model(model, run.tokenizer, _eval_request(run.conf), run.run_dir,
                masked=run.objective.auto_class == "AutoModelForMaskedLM")
    model.train(training_mode)


def publish(run: RunSetup, trainer: PtftTrainer) -> None:
    """With hub.push or hub.dry_run: stage, reload-check against the model in memory, upload. The
    run is finished already: a failure is a PublishError, and `ptft-hf-push` can push it later."""
    hub: HubConfig = run.conf.hub
    if not (hub.push or hub.dry_run) or not trainer.is_world_process_zero():
        return
    from ptft_hf.hub.publish import PublishError, publish_run

    try:  # sharded weights: checked against model/
        publish_run(run.run_dir, hub, trained=None if weights_are_sharded() else run.prepared.model)
    except UserError as err:
        raise PublishError(err.problems) from err
