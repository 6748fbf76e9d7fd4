"""run(cfg) -> metrics: the readable top-level story of one run.

1. refuse to overwrite a finished run, validate every group, write the resolved config;
2. load text, tokenizer (trained when building from scratch), model, strategy;
3. tokenise and pack, count tokens, compute the unigram floor;
4. evaluate, train, evaluate; save the model, metrics, log, plot and report.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from ptft_hf.config.schema import PtftConfig, set_trainer_fields
from ptft_hf.config.validate import validate
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.data.packing import block_array, flat_token_ids, pack_blocks, tokenize_dataset
from ptft_hf.data.sources import load_text_splits
from ptft_hf.errors import UserError
from ptft_hf.run_dir import FINISHED_MARKER, guard_run_dir
from ptft_hf.models.loading import count_parameters, load_causal_lm, load_tokenizer, max_positions
from ptft_hf.strategies import get_strategy
from ptft_hf.training.callbacks import JsonlLogCallback, SampleCallback, generate_samples
from ptft_hf.training.metrics import unigram_perplexity
from ptft_hf.training.report import plot_loss, write_report
from ptft_hf.training.trainer import PtftTrainer

log = logging.getLogger(__name__)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _save_resolved_config(cfg: DictConfig, path: Path) -> None:
    """The resolved config, trainer pruned to the TrainingArguments fields the run sets."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["trainer"] = set_trainer_fields(resolved["trainer"])
    OmegaConf.save(OmegaConf.create(resolved), path)


def _training_arguments(cfg: PtftConfig, run_dir: Path) -> TrainingArguments:
    trainer = set_trainer_fields(vars(cfg.trainer))
    return TrainingArguments(output_dir=str(run_dir / "checkpoints"), seed=cfg.seed, **trainer)


def _tokens_per_step(args: TrainingArguments, block_size: int) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * block_size


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate one configured run in `run_dir`; returns the metrics written there."""
    started = time.time()
    run_dir = Path(run_dir)
    guard_run_dir(run_dir, bool(cfg.overwrite))
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_resolved_config(cfg, run_dir / "config.yaml")
    conf: PtftConfig = OmegaConf.to_object(cfg)
    set_seed(conf.seed)

    splits = load_text_splits(conf.data, conf.seed)
    log.info("data %s: %d train / %d eval documents", conf.data.name, len(splits["train"]), len(splits["eval"]))
    tokenizer = load_tokenizer(conf.model, (t for t in splits["train"]["text"]))
    strategy = get_strategy(conf.strategy)
    model = load_causal_lm(conf.model, tokenizer, **strategy.model_kwargs())
    positions = max_positions(model)
    if positions is not None and conf.objective.block_size > positions:
        raise UserError.of("objective.block_size", f"{conf.objective.block_size} is longer than the model's {positions} positions",
                           f"use objective.block_size={positions} or less")
    model = strategy.wrap(model)
    params = count_parameters(model)
    log.info("model %s: %d parameters, %d trainable (%.2f%%)", conf.model.name, params["parameters"],
             params["trainable_parameters"], params["trainable_percent"])

    block = conf.objective.block_size
    train_blocks, train_stats = pack_blocks(tokenize_dataset(splits["train"], tokenizer, conf.objective.add_eos, conf.objective.num_proc), block)
    eval_blocks, eval_stats = pack_blocks(tokenize_dataset(splits["eval"], tokenizer, conf.objective.add_eos, conf.objective.num_proc), block)
    for name, stats in (("data.path", train_stats), ("data.eval_path", eval_stats)):
        if stats.blocks == 0:
            raise UserError.of(name, f"{stats.tokens} tokens make no block of objective.block_size={block}",
                               "give more text or lower objective.block_size")
    log.info("packed train: %s", train_stats.as_dict())
    log.info("packed eval: %s", eval_stats.as_dict())
    eval_array = block_array(eval_blocks)
    unigram = unigram_perplexity(block_array(train_blocks).ravel(), eval_array[:, 1:].ravel(), len(tokenizer))

    args = _training_arguments(conf, run_dir)
    tokens_per_step = _tokens_per_step(args, block)
    log.info("%d tokens per optimiser step, %d steps", tokens_per_step, args.max_steps)
    trainer = PtftTrainer(
        model=model,
        args=args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=CausalLMCollator(),
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(run_dir / "train_log.jsonl"), SampleCallback(tokenizer, conf.samples, run_dir / "samples.jsonl")],
        shift_labels=True,
    )
    before = trainer.evaluate()
    train_result = trainer.train()
    after = trainer.evaluate()

    metrics: dict[str, Any] = {
        "run_name": run_dir.name,
        "objective": conf.objective.name,
        "model": conf.model.name,
        "data": conf.data.name,
        "strategy": conf.strategy.name,
        "eval_loss_before": before["eval_loss"],
        "eval_perplexity_before": before["eval_perplexity"],
        **{k: v for k, v in after.items() if k.startswith("eval_")},
        "unigram_perplexity": unigram,
        "train_loss": train_result.training_loss,
        "train_steps": train_result.global_step,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "train_tokens": train_result.global_step * tokens_per_step,
        "train_tokens_per_second": train_result.global_step * tokens_per_step / max(train_result.metrics.get("train_runtime", 0.0), 1e-9),
        "train_flos": train_result.metrics.get("total_flos"),
        "tokens_per_step": tokens_per_step,
        "data_train": train_stats.as_dict(),
        "data_eval": eval_stats.as_dict(),
        "vocab_size": len(tokenizer),
        **params,
    }
    if trainer.is_world_process_zero():
        model_dir = run_dir / "model"
        trainer.save_model(str(model_dir))
        tokenizer.save_pretrained(str(model_dir))
        (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in config.yaml
        samples = generate_samples(model, tokenizer, conf.samples)
        metrics["wall_time_s"] = round(time.time() - started, 2)
        plot_loss(run_dir / "train_log.jsonl", run_dir / "loss.png", title=f"{conf.model.name} on {conf.data.name}")
        write_report(run_dir, metrics, samples)
        _write_json(run_dir / FINISHED_MARKER, metrics)  # last: its presence marks a finished run
    log.info("eval perplexity %.2f -> %.2f (unigram %.2f); run folder %s",
             metrics["eval_perplexity_before"], metrics["eval_perplexity"], unigram, run_dir)
    return metrics
