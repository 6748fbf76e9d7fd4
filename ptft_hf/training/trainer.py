"""The project's `transformers.Trainer` subclass."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import speed_metrics

from ptft_hf.training.metrics import TokenLossAccumulator


class PtftTrainer(Trainer):
    """A Trainer whose evaluation is token-weighted and keeps no logits.

    The stock evaluation loop averages per-batch mean losses (weighting batches, not tokens) and
    gathers logits whenever metrics are computed. Here each batch adds its summed token loss,
    token count and correct predictions to three numbers, reduced across processes at the end.
    `shift_labels=True` for causal LMs (position t predicts t+1); False for masked LMs.
    """

    def __init__(self, *args: Any, shift_labels: bool = True, token_metrics: bool = True,
                 eval_data_collator: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.shift_labels = shift_labels
        self.token_metrics = token_metrics
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset: Any = None):
        """Evaluation may batch differently from training (fixed MLM masks, no padding counter)."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        target = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(target, dict) or not self.token_metrics:  # per-name sets / stock metrics loop
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.model
        was_training = model.training
        model.eval()
        totals = TokenLossAccumulator()
        start = time.time()
        batches = 0
        with torch.no_grad():
            for batch in dataloader:
                batch = self._prepare_inputs(batch)
                labels = batch.pop("labels")
                with self.compute_loss_context_manager():
                    outputs = model(**batch)
                totals.update(outputs.logits, labels, shift=self.shift_labels)
                batches += 1
        if self.args.world_size > 1:
            reduced = self.accelerator.reduce(totals.as_tensor().to(self.args.device), reduction="sum")
            totals = TokenLossAccumulator.from_tensor(reduced.cpu())
        if was_training:
            model.train()
        metrics = totals.metrics(metric_key_prefix)
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=None, num_steps=batches, num_tokens=totals.tokens))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
