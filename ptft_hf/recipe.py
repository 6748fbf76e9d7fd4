"""run(cfg) -> metrics: the readable top-level story of one run.

1. refuse to overwrite a finished run, validate every group, write the resolved config;
2. load text, tokenizer (trained when building from scratch), model, strategy;
3. tokenise and pack, count tokens, compute the unigram floor;
4. evaluate, train, evaluate; save the model (or adapter), metrics, log, plot and report.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from ptft_hf.config.schema import DataConfig, PtftConfig, set_trainer_fields
from ptft_hf.config.validate import validate
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.data.packing import PackingStats, block_array, pack_blocks, tokenize_dataset
from ptft_hf.data.sources import load_text_splits
from ptft_hf.errors import UserError
from ptft_hf.models.loading import count_parameters, load_causal_lm, load_tokenizer, max_positions
from ptft_hf.run_dir import FINISHED_MARKER, guard_run_dir
from ptft_hf.strategies import get_strategy
from ptft_hf.training.callbacks import JsonlLogCallback, SampleCallback, generate_samples
from ptft_hf.training.cost import estimate_training_flops, peak_memory_mb, reset_peak_memory
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


def _pack(texts: Dataset, tokenizer: Any, conf: PtftConfig, field: str) -> tuple[Dataset, PackingStats]:
    block = conf.objective.block_size
    blocks, stats = pack_blocks(tokenize_dataset(texts, tokenizer, conf.objective.add_eos, conf.objective.num_proc), block)
    if stats.blocks == 0:
        raise UserError.of(field, f"{stats.tokens} tokens make no block of objective.block_size={block}",
                           "give more text or lower objective.block_size")
    return blocks, stats


def _reference_eval_sets(references: Mapping[str, DataConfig], tokenizer: Any, conf: PtftConfig) -> dict[str, Dataset]:
    """Eval splits of other data sets (e.g. the general corpus during domain fine-tuning)."""
    return {name: _pack(load_text_splits(data, conf.seed)["eval"], tokenizer, conf, f"{name}.eval")[0]
            for name, data in references.items()}


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
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    params = count_parameters(model)
    log.info("model %s, strategy %s: %d parameters, %d trainable (%.4f%%)", conf.model.name, conf.strategy.name,
             params["parameters"], params["trainable_parameters"], params["trainable_percent"])

    train_blocks, train_stats = _pack(splits["train"], tokenizer, conf, "data.path")
    eval_blocks, eval_stats = _pack(splits["eval"], tokenizer, conf, "data.eval_path")
    log.info("packed train: %s; eval: %s", train_stats.as_dict(), eval_stats.as_dict())
    unigram = unigram_perplexity(block_array(train_blocks).ravel(), block_array(eval_blocks)[:, 1:].ravel(), len(tokenizer))
    reference_sets = _reference_eval_sets(references or {}, tokenizer, conf)

    args = _training_arguments(conf, run_dir)
    tokens_per_step = _tokens_per_step(args, conf.objective.block_size)
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
    before_refs = trainer.evaluate(reference_sets) if reference_sets else {}
    train_start = time.time()
    train_result = trainer.train()
    train_wall = time.time() - train_start
    after = trainer.evaluate()
    after_refs = trainer.evaluate(reference_sets) if reference_sets else {}

    train_tokens = train_result.global_step * tokens_per_step
    metrics: dict[str, Any] = {
        "run_name": run_dir.name,
        "objective": conf.objective.name,
        "model": conf.model.name,
        "base_model": conf.model.name_or_path,
        "data": conf.data.name,
        "strategy": conf.strategy.name,
        "eval_loss_before": before["eval_loss"],
        "eval_perplexity_before": before["eval_perplexity"],
        **{k: v for k, v in after.items() if k.startswith("eval_")},
        **{f"{k}_before": v for k, v in before_refs.items() if k.endswith(("_loss", "_perplexity"))},
        **{k: v for k, v in after_refs.items() if k.endswith(("_loss", "_perplexity"))},
        "unigram_perplexity": unigram,
        "train_loss": train_result.training_loss,
        "train_steps": train_result.global_step,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "train_wall_time_s": round(train_wall, 2),
        "train_tokens": train_tokens,
        "train_tokens_per_second": train_tokens / max(train_result.metrics.get("train_runtime", 0.0), 1e-9),
        "train_flops_estimate": estimate_training_flops(params, train_tokens),
        "peak_memory_mb": peak_memory_mb(),
        "tokens_per_step": tokens_per_step,
        "data_train": train_stats.as_dict(),
        "data_eval": eval_stats.as_dict(),
        "vocab_size": len(tokenizer),
        "lineage": dict(lineage or {}),
        **params,
    }
    if trainer.is_world_process_zero():
        model_dir = run_dir / "model"
        trainer.save_model(str(model_dir))  # a PeftModel saves only its adapter
        tokenizer.save_pretrained(str(model_dir))
        (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in config.yaml
        metrics["saved_bytes"] = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        samples = generate_samples(model, tokenizer, conf.samples)
        metrics["sample"] = samples[0] if samples else None
        metrics["wall_time_s"] = round(time.time() - started, 2)
        plot_loss(run_dir / "train_log.jsonl", run_dir / "loss.png", title=f"{conf.model.name} on {conf.data.name}")
        write_report(run_dir, metrics, samples)
        _write_json(run_dir / FINISHED_MARKER, metrics)  # last: its presence marks a finished run
    log.info("eval perplexity %.2f -> %.2f (unigram %.2f); run folder %s",
             metrics["eval_perplexity_before"], metrics["eval_perplexity"], unigram, run_dir)
    return metrics
