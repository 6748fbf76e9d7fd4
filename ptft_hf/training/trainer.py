"""The project's `transformers.Trainer` subclass."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import speed_metrics

from ptft_hf.training.metrics import IGNORE_INDEX, TokenLossAccumulator
from ptft_hf.training.sparse_head import predict_only_at, selected_label_loss


class PtftTrainer(Trainer):
    """A Trainer whose evaluation is token-weighted and keeps no logits.

    The stock evaluation loop averages per-batch mean losses (weighting batches, not tokens) and
    gathers logits whenever metrics are computed. Here each batch adds its summed token loss,
    token count and correct predictions to three numbers, reduced across processes at the end.
    `shift_labels=True` for causal LMs (position t predicts t+1); False for masked LMs.
    `labelled_positions_only=True` (masked LMs) runs the vocabulary projection only at the masked
    positions, in training and evaluation (see `sparse_head`).
    """

    def __init__(self, *args: Any, shift_labels: bool = True, token_metrics: bool = True,
                 eval_data_collator: Any = None, labelled_positions_only: bool = False, **kwargs: Any):
        if labelled_positions_only:
            kwargs.setdefault("compute_loss_func", selected_label_loss)
        super().__init__(*args, **kwargs)
        self.shift_labels = shift_labels
        self.token_metrics = token_metrics
        self.eval_data_collator = eval_data_collator
        self.labelled_positions_only = labelled_positions_only

    def _head_scope(self, model: Any, labels: torch.Tensor):
        if not self.labelled_positions_only:
            return contextlib.nullcontext()
        return predict_only_at(model, labels != IGNORE_INDEX)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.get("labels")
        with self._head_scope(model, labels) if labels is not None else contextlib.nullcontext():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

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
                with self.compute_loss_context_manager(), self._head_scope(model, labels):
                    outputs = model(**batch)
                if self.labelled_positions_only:
                    labels = labels[labels != IGNORE_INDEX].unsqueeze(0)
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
