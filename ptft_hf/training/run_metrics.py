"""What a run measured, as typed records, and the flat `metrics.json` written from them.

`Evaluation` holds the figures of the evaluations before and after training (the run's own eval
set and the reference sets, e.g. the general corpus during domain training); `Throughput` the
training's steps, tokens and speed. `run_metrics` lays them out as `metrics.json` has always held
them, so older run folders and the code that reads them (card, pipeline report, API) agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ptft_hf.training.cost import estimate_training_flops, peak_memory_mb

_NOT_QUALITY = ("_runtime", "_per_second", "_tokens", "_preparation_time")


def is_quality_metric(key: str) -> bool:
    """An eval figure of the model (loss, perplexity, accuracy), not of the evaluation's speed."""
    return key.startswith("eval_") and not key.endswith(_NOT_QUALITY)


@dataclass
class Evaluation:
    """The Trainer's eval figures before and after training, for the run's eval (test) set and
    references, and the validation split's after training (`validation_*`: what training chose on)."""

    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    references_before: dict[str, float] = field(default_factory=dict)
    references_after: dict[str, float] = field(default_factory=dict)

    reference_names: list[str] = field(default_factory=list)  # the reference sets, as `Trainer.evaluate` named them
    validation: dict[str, float] = field(default_factory=dict)  # the validation split after training (validation_*)

    def references(self) -> dict[str, dict[str, float | None]]:
        """Per reference set: its loss and perplexity before and after training."""
        return {name: {f"{figure}{when}": source.get(f"eval_{name}_{figure}")
                       for figure in ("loss", "perplexity") for when, source in (("_before", self.references_before),
                                                                                  ("", self.references_after))}
                for name in self.reference_names}

    def as_metrics(self) -> dict[str, Any]:
        """The flat keys metrics.json has always had (eval_<name>_perplexity, ...), and the typed
        `references` record that the card and the pipeline report read."""
        lm = ("_loss", "_perplexity")
        return {**{f"{k}_before": v for k, v in self.before.items() if is_quality_metric(k)},
                **{k: v for k, v in self.after.items() if k.startswith("eval_")},
                **{f"{k}_before": v for k, v in self.references_before.items() if k.endswith(lm)},
                **{k: v for k, v in self.references_after.items() if k.endswith(lm)},
                **{k: v for k, v in self.validation.items() if k.startswith("validation_") and not k.endswith(_NOT_QUALITY)},
                **({"references": self.references()} if self.reference_names else {})}


def reference_perplexities(metrics: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(name, before, after) of every reference eval set of a run: from the typed `references`
    record, or, for run folders written before it existed, from the flat `eval_<name>_perplexity` keys."""
    if "references" in metrics:
        return [(name, r["perplexity_before"], r["perplexity"]) for name, r in metrics["references"].items()
                if r.get("perplexity_before") is not None and r.get("perplexity") is not None]
    pairs = []
    for key, after in metrics.items():
        if key.startswith("eval_") and key.endswith("_perplexity") and key != "eval_perplexity":
            before = metrics.get(f"{key}_before")
            if before is not None:
                pairs.append((key[len("eval_"):-len("_perplexity")], before, after))
    return pairs


@dataclass
class Throughput:
    """Steps, tokens and speed of the training call (a resumed run counts only what this call trained)."""

    train_loss: float
    steps: int
    runtime_s: float | None
    wall_time_s: float
    tokens: int  # tokens the optimiser saw over the whole run
    tokens_this_call: float
    resumed_from_step: int
    precision: str  # bf16, fp16 or fp32, as trainer.bf16=auto resolved

    def as_metrics(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "train_steps": self.steps, "train_runtime_s": self.runtime_s,
                "train_wall_time_s": round(self.wall_time_s, 2), "train_tokens": self.tokens,
                "train_tokens_per_second": self.tokens_this_call / max(self.runtime_s or 0.0, 1e-9),
                "precision": self.precision, "resumed_from_step": self.resumed_from_step}


def train_tokens(prepared: Any, args: Any, steps: int) -> int:
    """Tokens the optimiser saw: fixed blocks for LM objectives, counted real tokens otherwise."""
    padding = prepared.metrics.get("padding")
    if padding is not None:
        return int(padding["tokens"])
    block = prepared.metrics.get("data_train", {}).get("block_size") or len(prepared.train_dataset[0]["input_ids"])
    return steps * tokens_per_step(args, block)


def tokens_per_step(args: Any, block_size: int) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * block_size


def run_metrics(identity: Mapping[str, Any], evaluation: Evaluation, throughput: Throughput, params: Mapping[str, Any],
                prepared_metrics: Mapping[str, Any], passes: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The flat `metrics.json` record: who (run, objective, model, data, strategy), the evaluations,
    the throughput, the cost, the objective's data accounting, the parameter counts."""
    return {**identity, **evaluation.as_metrics(), **throughput.as_metrics(),
            "train_flops_estimate": estimate_training_flops(dict(params), throughput.tokens, passes=passes),
            "peak_memory_mb": peak_memory_mb(), **extra, **prepared_metrics, **params}
