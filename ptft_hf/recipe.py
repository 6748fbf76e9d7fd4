"""run(cfg) -> metrics: the readable top-level story of one run.

1. refuse to overwrite a finished run, validate every group, find the checkpoint to resume from;
2. load text, tokenizer (trained when building from scratch), model, strategy;
3. tokenise and pack, count tokens, compute the unigram floor;
1. refuse to overwrite a finished run, validate every group, find the checkpoint to resume from;
2. load text, tokenizer (trained when building from scratch), model, strategy;
3. tokenise and pack, count tokens, compute the unigram floor;
4. start writing: set a replaced run aside, write the resolved config (secrets redacted);
5. evaluate, train (resuming when the folder holds an unfinished run), evaluate; save the model
   (or adapter) through a staging folder with its model card, metrics, log, plot and report;
6. with hub.push or hub.dry_run: stage, reload-check and upload the model (ptft_hf.hub.publish).

Nothing is written into the run folder before step 4, so a mistake found in the data or the
model leaves an earlier run there as it was (see `ptft_hf.run_dir`).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from datasets import IterableDataset
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from ptft_hf.config.redact import redact, redact_file, secret_values
from ptft_hf.config.schema import DataConfig, HubConfig, ModelConfig, PtftConfig, set_trainer_fields
from ptft_hf.config.training_args import build_training_arguments
from ptft_hf.config.validate import validate
from ptft_hf.data.chat import as_messages, prompt_text
from ptft_hf.data.sources import MIXTURE_PREFIX, load_text_splits, load_text_stream, mixture_name
from ptft_hf.data.streaming import MixedStream
from ptft_hf.distributed import is_main_process, main_process_first, wait_for_everyone, weights_are_sharded
from ptft_hf.errors import UserError
from ptft_hf.hub.card import ADAPTER, FULL, write_card
from ptft_hf.models.loading import count_parameters, load_tokenizer
from ptft_hf.objectives import OBJECTIVES, Prepared
from ptft_hf.pipeline import config_fingerprint
from ptft_hf.run_dir import (FINISHED_MARKER, checkpoint_step, discard_aside, guard_run_dir, latest_checkpoint,
                             resume_checkpoint, start_writing)
from ptft_hf.strategies import get_strategy
from ptft_hf.training.callbacks import JsonlLogCallback, SampleCallback, generate_samples, tensorboard_callback
from ptft_hf.training.generation import exact_match_eval
from ptft_hf.training.cost import estimate_training_flops, peak_memory_mb, reset_peak_memory
from ptft_hf.training.report import baseline_verdict, beats_baseline, plot_loss, write_report
from ptft_hf.training.precision import resolve_trainer_precision
from ptft_hf.training.safety import Interrupted, NonFiniteLoss, StopOnSignal
from ptft_hf.training.trainer import PtftTrainer

log = logging.getLogger(__name__)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, trainer pruned to the TrainingArguments fields the run sets, secrets
    (tokens, passwords, keys) replaced by "***"."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["trainer"] = set_trainer_fields(resolved["trainer"])
    return redact(resolved, secret_values(resolved))


def _training_arguments(cfg: PtftConfig, run_dir: Path, objective_defaults: dict[str, Any]) -> TrainingArguments:
    """The trainer group's fields; an objective's needs (e.g. length grouping) unless set there.
    `resume_from_checkpoint` is the run's business (see `run_dir.resume_checkpoint`), not the Trainer's.
    `bf16: auto` is resolved here, and the log says what it became and why."""
    fields, choice = resolve_trainer_precision(vars(cfg.trainer))
    if choice is not None:
        log.info("trainer.bf16=auto -> %s (trainer.bf16=false or true to choose)", choice.reason)
    return build_training_arguments(fields, run_dir / "checkpoints", cfg.seed, objective_defaults)


def _save_model(trainer: PtftTrainer, tokenizer: Any, model_dir: Path) -> None:
    """Save into `model.partial/`, then rename: `model/` is never half-written. Every rank calls
    this (under FSDP or ZeRO-3 the full weights are gathered from all of them); rank 0 writes."""
    staging = model_dir.with_name(model_dir.name + ".partial")
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_final_model(str(staging))
    if not main:
        return
    tokenizer.save_pretrained(str(staging))
    _save_stop_tokens(trainer.model, tokenizer, staging)
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in config.yaml
    if model_dir.exists():  # from an attempt that died before writing metrics.json
        shutil.rmtree(model_dir)
    staging.rename(model_dir)


def _save_stop_tokens(model: Any, tokenizer: Any, folder: Path) -> None:
    """An adapter's folder has no generation_config.json (the base model's is loaded with it);
    when SFT made the end-of-turn token a stop token as well as EOS, it is written there, so the
    adapter stops at the end of its turn (`ptft_hf.api` and `GenerationConfig.from_pretrained` read it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "generation_config", None)
    if (folder / "generation_config.json").exists() or config is None:
        return
    if isinstance(config.eos_token_id, list) and config.eos_token_id != [tokenizer.eos_token_id]:
        config.save_pretrained(folder)


def _tokens_per_step(args: TrainingArguments, block_size: int) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * block_size


def build_trainer(conf: PtftConfig, run_dir: Path, tokenizer: Any, prepared: Prepared,
                  extra_callbacks: Sequence[Any] = (), resuming: bool = False) -> PtftTrainer:
    """TrainingArguments, callbacks and the PtftTrainer of a run, as `run` builds them (the
    benchmarks time this same trainer; `extra_callbacks` are appended to the run's own)."""
    args = _training_arguments(conf, run_dir, prepared.training_overrides)
    callbacks = _callbacks(run_dir, tokenizer, conf, prepared, resuming=resuming) + list(extra_callbacks)
    if "tensorboard" in args.report_to:  # events in <run>/tensorboard, not inside checkpoints/
        args.report_to = [r for r in args.report_to if r != "tensorboard"]
        callbacks.append(tensorboard_callback(run_dir / "tensorboard"))
    return PtftTrainer(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train_dataset,
        eval_dataset=prepared.eval_dataset,
        data_collator=prepared.collator,
        eval_data_collator=prepared.eval_collator,
        processing_class=tokenizer,
        compute_metrics=prepared.compute_metrics,
        callbacks=callbacks,
        shift_labels=prepared.shift_labels,
        token_metrics=prepared.token_metrics,
        labelled_positions_only=prepared.labelled_positions_only,
        batch_observers=prepared.batch_observers,
        length_megabatch=conf.objective.length_megabatch,
        chunked_loss=conf.objective.chunked_loss and prepared.task_type == "CAUSAL_LM",
        rdrop_alpha=conf.objective.rdrop_alpha if conf.objective.name == "classification" else 0.0,
    )


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    references: Mapping[str, DataConfig] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one configured run in `run_dir`; returns the metrics written there.

    `references`: other data sets whose eval perplexity is measured before and after training
    (the pipeline passes the pretraining corpus here). `lineage`: where the base model came
    from, recorded in the metrics.
    """
    started = time.time()
    reset_peak_memory()
    run_dir = Path(run_dir)
    guard_run_dir(run_dir, bool(cfg.overwrite), pipeline=False)  # a single run: a finished pipeline folder too
    validate(cfg)
    conf: PtftConfig = OmegaConf.to_object(cfg)
    resume_from = resume_checkpoint(run_dir, getattr(conf.trainer, "resume_from_checkpoint", None))
    secrets = secret_values(OmegaConf.to_container(cfg, resolve=True))
    set_seed(conf.seed)

    with main_process_first():  # several processes: rank 0 fills the caches, the others read them
        if conf.data.streaming:
            splits = load_text_stream(conf.data, conf.seed)
            log.info("data %s: streamed train documents / %d eval documents", conf.data.name, len(splits["eval"]))
        else:
            splits = load_text_splits(conf.data, conf.seed, chat=conf.objective.name == "sft")
            log.info("data %s: %d train / %d eval documents", conf.data.name, len(splits["train"]), len(splits["eval"]))
            if conf.data.replay:
                splits = add_replay(conf, splits, references or {})
        if resume_from is not None and conf.model.tokenizer.train:  # the tokenizer the checkpoint was trained with
            tokenizer = load_tokenizer(ModelConfig(name_or_path=str(resume_from)))
        else:
            tokenizer = load_tokenizer(conf.model, tokenizer_texts(splits, conf))
        strategy = get_strategy(conf.strategy)
        prepared = OBJECTIVES[conf.objective.name](conf, splits, tokenizer, strategy, dict(references or {}))
    params = count_parameters(prepared.model)
    log.info("model %s, objective %s, strategy %s: %d parameters, %d trainable (%.4f%%)", conf.model.name,
             conf.objective.name, conf.strategy.name, params["parameters"], params["trainable_parameters"],
             params["trainable_percent"])
    log.info("data: %s", {k: v for k, v in prepared.metrics.items() if k.startswith("data_")})

    if is_main_process():  # the run folder is rank 0's to write
        start_writing(run_dir, _resolved_config(cfg), resume_from)
    wait_for_everyone()
    stop = StopOnSignal()
    trainer = build_trainer(conf, run_dir, tokenizer, prepared, [stop], resuming=resume_from is not None)
    args = trainer.args
    before = trainer.evaluate()
    before_refs = trainer.evaluate(prepared.references) if prepared.references else {}
    train_start = time.time()
    try:
        with stop.handling_signals():
            train_result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except NonFiniteLoss as err:
        last = latest_checkpoint(run_dir)
        raise UserError.of("training", str(err),
                           f"lower trainer.learning_rate (now {args.learning_rate:g}) or raise trainer.warmup_steps; "
                           f"nothing from step {err.step} was saved (last good checkpoint: {last or 'none yet'})") from err
    if stop.signum is not None:
        checkpoint = latest_checkpoint(run_dir)
        raise Interrupted(stop.signum, train_result.global_step, str(checkpoint) if checkpoint else None)
    train_wall = time.time() - train_start
    after = trainer.evaluate()
    after_refs = trainer.evaluate(prepared.references) if prepared.references else {}
    sharded = weights_are_sharded()  # FSDP / ZeRO-3: every rank takes part in generation and saving
    if conf.objective.name == "sft" and conf.objective.exact_match and (trainer.is_world_process_zero() or sharded):
        after.update(exact_match_eval(prepared.model, tokenizer, list(prepared.extras["eval_rows"]),
                                      prepared.extras["template"], conf.objective.max_new_tokens,
                                      run_dir / "predictions.jsonl" if trainer.is_world_process_zero() else None))

    steps = train_result.global_step
    train_tokens = _train_tokens(prepared, args, steps)
    if isinstance(prepared.train_dataset, MixedStream):  # the shares of what was trained (every rank mixes alike)
        prepared.metrics["data_mixture"] = {
            name: {**share, "blocks": share["blocks"] * args.world_size}
            for name, share in prepared.train_dataset.shares_at(trainer.stream_blocks_trained(steps)).items()}
    resumed_step = checkpoint_step(resume_from) if resume_from else 0
    tokens_this_call = train_tokens * (steps - resumed_step) / max(steps, 1) if prepared.metrics.get("padding") is None else train_tokens
    metrics: dict[str, Any] = {
        "run_name": run_dir.name,
        "objective": conf.objective.name,
        "model": conf.model.name,
        "base_model": conf.model.name_or_path,
        "random_init": conf.model.random_init,
        "data": conf.data.name,
        "strategy": conf.strategy.name,
        **{f"{k}_before": v for k, v in before.items() if _is_quality_metric(k)},
        **{k: v for k, v in after.items() if k.startswith("eval_")},
        **{f"{k}_before": v for k, v in before_refs.items() if k.endswith(("_loss", "_perplexity"))},
        **{k: v for k, v in after_refs.items() if k.endswith(("_loss", "_perplexity"))},
        "train_loss": train_result.training_loss,
        "train_steps": steps,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "train_wall_time_s": round(train_wall, 2),
        "train_tokens": train_tokens,
        "train_tokens_per_second": tokens_this_call / max(train_result.metrics.get("train_runtime", 0.0), 1e-9),
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",  # trainer.bf16=auto resolved
        "resumed_from_step": resumed_step,
        "config_fingerprint": config_fingerprint(cfg),
        "train_flops_estimate": estimate_training_flops(params, train_tokens, passes=2 if trainer.rdrop_alpha else 1),
        "peak_memory_mb": peak_memory_mb(),
        "vocab_size": len(tokenizer),
        "lineage": dict(lineage or {}),
        **prepared.metrics,
        **params,
    }
    model_dir = run_dir / "model"
    _save_model(trainer, tokenizer, model_dir)
    samples = []
    if prepared.generates and (trainer.is_world_process_zero() or sharded):
        samples = generate_samples(prepared.model, tokenizer, conf.samples, _prompt_formatter(prepared, tokenizer))
    verdict = baseline_verdict(metrics)
    metrics["beats_baseline"] = beats_baseline(metrics)  # None: no floor to compare with
    if verdict:
        log.warning("%s: check the learning rate, the steps and the data (metrics.json beats_baseline=false)", verdict)
    if trainer.is_world_process_zero():
        metrics["saved_bytes"] = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        metrics["sample"] = samples[0] if samples else None
        metrics["wall_time_s"] = round(time.time() - started, 2)
        plot_loss(run_dir / "train_log.jsonl", run_dir / "loss.png", title=f"{conf.model.name} on {conf.data.name}")
        redact_file(write_report(run_dir, metrics, samples), secrets)
        write_card(model_dir / "README.md", run_dir, ADAPTER if strategy.saves_adapter_only else FULL, conf.hub.repo_id,
                   redact(metrics, secrets))
        _write_json(run_dir / FINISHED_MARKER, redact(metrics, secrets))  # last: its presence marks a finished run
        discard_aside(run_dir)  # a replaced earlier run, kept until now
    log.info("%s; run folder %s", ", ".join(f"{k} {metrics[k + '_before']:.4g} -> {metrics[k]:.4g}"
                                            for k in ("eval_perplexity", "eval_accuracy", "eval_f1") if k + "_before" in metrics), run_dir)
    if (conf.hub.push or conf.hub.dry_run) and trainer.is_world_process_zero():
        _publish(run_dir, conf.hub, None if sharded else prepared.model)  # sharded: checked against model/
    wait_for_everyone()  # several processes: the folder is complete before any rank reads it (a next stage)
    return metrics


def _publish(run_dir: Path, hub: HubConfig, model: Any) -> None:
    """Stage, reload-check against the model in memory, upload. The run is finished already: a
    failure is reported as a PublishError and the folder can be pushed later with ptft-hf-push."""
    from ptft_hf.hub.publish import PublishError, publish_run

    try:
        publish_run(run_dir, hub, trained=model)
    except UserError as err:
        raise PublishError(err.problems) from err


def _is_quality_metric(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(("_runtime", "_per_second", "_tokens", "_preparation_time"))


def _train_tokens(prepared: Prepared, args: TrainingArguments, steps: int) -> int:
    """Tokens the optimiser saw: fixed blocks for LM objectives, counted real tokens otherwise."""
    padding = prepared.metrics.get("padding")
    if padding is not None:
        return int(padding["tokens"])
    block = prepared.metrics.get("data_train", {}).get("block_size") or len(prepared.train_dataset[0]["input_ids"])
    return steps * _tokens_per_step(args, block)


def add_replay(conf: PtftConfig, splits: Any, references: Mapping[str, DataConfig]) -> Any:
    """Mix `data.replay` of the training tokens from the base stage's own training data (the
    documents it trained on, never its eval ones) into this stage's: a corpus mixed by token share,
    named `replay_<data>`, counted in `data_mixture` like any other."""
    if len(references) != 1:
        raise UserError.of("data.replay", "needs the base stage's data, and this run has no base stage",
                           "set it on a pipeline stage with init_from, or mix a corpus with data.extra_train (weight)")
    (base_name, base_data), = references.items()
    name = f"replay_{base_name}"
    base_train = load_text_splits(base_data, conf.seed)["train"].select_columns(["text"])
    splits[f"{MIXTURE_PREFIX}{name}"] = base_train.cast(splits["train"].select_columns(["text"]).features)
    conf.data.extra_train = [*conf.data.extra_train, {"name": name, "weight": conf.data.replay}]
    log.info("replay: %.0f%% of the training tokens from %s's %d training documents", 100 * conf.data.replay, base_name,
             len(base_train))
    return splits


def tokenizer_texts(splits: Mapping[str, Any], conf: PtftConfig) -> Iterator[str]:
    """What a tokenizer trained for this run reads: `training_texts` of the training data, and with
    corpora mixed by weight, of each corpus its weight's part of `model.tokenizer.max_documents`
    (a vocabulary for the mixture, not for the main corpus alone)."""
    budget, extra = conf.model.tokenizer.max_documents, conf.data.extra_train
    weights = {mixture_name(e, i): float(e["weight"]) for i, e in enumerate(extra) if e.get("weight") is not None}
    if not weights:
        return training_texts(splits["train"], budget, conf.seed)
    parts = [(splits["train"], 1.0 - sum(weights.values()))]
    parts += [(splits[f"{MIXTURE_PREFIX}{name}"], weight) for name, weight in weights.items()]
    return itertools.chain.from_iterable(
        training_texts(corpus, None if budget is None else max(1, round(budget * share)), conf.seed) for corpus, share in parts)


def training_texts(train: Any, max_documents: int | None = None, seed: int = 0) -> Iterator[str]:
    """Texts to train a tokenizer on: the text column, or the turns of chat data, of at most
    `max_documents` documents (a seeded random sample, kept in corpus order; a stream's first
    ones), read a batch at a time: a large corpus is never held in memory whole."""
    if isinstance(train, IterableDataset):  # a stream: its first documents
        train = train.take(max_documents) if max_documents is not None else train
    elif max_documents is not None and len(train) > max_documents:
        chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=max_documents, replace=False))
        log.info("tokenizer trained on %d of %d documents (model.tokenizer.max_documents)", max_documents, len(train))
        train = train.select(chosen)
    for batch in train.iter(batch_size=1000):
        if "text" in batch:
            yield from batch["text"]
            continue
        for values in zip(*batch.values()):
            yield from (m["content"] for m in as_messages(dict(zip(batch, values))))


def _prompt_formatter(prepared: Prepared, tokenizer: Any) -> Callable[[str], str] | None:
    """SFT samples: each configured prompt is a user turn, rendered with the chat template."""
    if "template" not in prepared.extras:
        return None
    template = prepared.extras["template"]
    return lambda prompt: prompt_text([{"role": "user", "content": prompt}], tokenizer, template)


def _callbacks(run_dir: Path, tokenizer: Any, conf: PtftConfig, prepared: Prepared, resuming: bool = False) -> list[Any]:
    """Log and sample callbacks; a resumed run's logs already hold the evaluation before training."""
    callbacks: list[Any] = [JsonlLogCallback(run_dir / "train_log.jsonl", before_training=not resuming)]
    if prepared.generates:
        callbacks.append(SampleCallback(tokenizer, conf.samples, run_dir / "samples.jsonl", _prompt_formatter(prepared, tokenizer),
                                        before_training=not resuming))
    return callbacks
