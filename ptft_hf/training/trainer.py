"""The project's `transformers.Trainer` subclass."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import Trainer, TrainerState
from transformers.integrations.deepspeed import deepspeed_init
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, speed_metrics

from ptft_hf.data.streaming import MixedStream, PackedStream
from ptft_hf.distributed import weights_are_sharded
from ptft_hf.models.sharded_loading import fill_shards, ranks_agree_on_reading_shards, reads_shards
from ptft_hf.training.chunked_loss import chunk_rows, chunkable_head, hidden_states_as_logits, linear_cross_entropy
from ptft_hf.training.item_count import exact_item_count
from ptft_hf.training.metrics import IGNORE_INDEX, TokenLossAccumulator
from ptft_hf.training.private_api import (ACCELERATOR_MODELS, COLLATOR_WITHOUT_UNUSED_COLUMNS, GET_DATALOADER,
                                          PREPARE_INPUTS, TRAIN_BATCH_SIZE, member)
from ptft_hf.training.rdrop import rdrop_loss
from ptft_hf.training.safety import NonFiniteLoss, TrainLossTally
from ptft_hf.training.sampling import ShuffledLengthGroupedSampler
from ptft_hf.training.sparse_head import predict_only_at, selected_label_loss

log = logging.getLogger(__name__)
STREAM_STATE = "stream_state-rank{rank}.json"  # a streamed run's position, per rank, in each checkpoint


def retied(state_dict: dict[str, Any], model: Any) -> dict[str, Any]:
    """A gathered state dict whose tied weights are one tensor again, so that `save_pretrained`
    writes each once, as one process's save does. FSDP gathers every parameter into a tensor of its
    own (GPT-2's `lm_head.weight` beside `transformer.wte.weight`, 136M duplicate parameters for
    Qwen2.5-0.5B), and transformers finds tied weights by shared storage."""
    tied = model.get_expanded_tied_weights_keys(all_submodels=True) if hasattr(model, "get_expanded_tied_weights_keys") else {}
    for target, source in tied.items():
        if target in state_dict and source in state_dict:
            state_dict[target] = state_dict[source]
    return state_dict


class PtftTrainer(Trainer):
    """A Trainer whose evaluation is token-weighted and keeps no logits.

    The stock evaluation loop averages per-batch mean losses (weighting batches, not tokens) and
    gathers logits whenever metrics are computed. Here each batch adds its summed token loss,
    token count and correct predictions to three numbers, reduced across processes at the end.
    `shift_labels=True` for causal LMs (position t predicts t+1); False for masked LMs.
    `labelled_positions_only=True` (masked LMs) runs the vocabulary projection only at the masked
    positions, in training and evaluation (see `sparse_head`).
    `chunked_loss=True` (causal LMs): the training loss is computed from the last hidden states a
    chunk at a time, without a batch's logits (see `chunked_loss`); same loss and gradients.
    `length_megabatch=N` (with `train_sampling_strategy="group_by_length"`): sort by length within
    megabatches of N batches and shuffle the batches (see `sampling`); None keeps transformers'
    `LengthGroupedSampler` (50 batches, served longest first).
    `rdrop_alpha > 0` (classification): R-Drop, two dropout samples of each batch and a KL term
    between their predictions (see `rdrop`).

    Safety and resume: a nan/inf training loss raises `NonFiniteLoss` before that step is logged,
    evaluated or saved; checkpoints hold no `training_args.bin` (a pickle that would carry
    `hub_token`); a resumed run's `training_loss` is the mean over all its steps, not only the
    resumed ones.

    Public hooks only, overridden or called; the few private Trainer members still read or called
    are listed, with the reason, in `private_api` and reached through it.
    """

    def __init__(self, *args: Any, shift_labels: bool = True, token_metrics: bool = True,
                 eval_data_collator: Any = None, labelled_positions_only: bool = False,
                 batch_observers: Any = (), length_megabatch: int | None = None, chunked_loss: bool = False,
                 rdrop_alpha: float = 0.0, **kwargs: Any):
        if labelled_positions_only:
            kwargs.setdefault("compute_loss_func", selected_label_loss)
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled:
            ranks_agree_on_reading_shards(self.model)
        if reads_shards(self.model) is not None:  # FSDP low-memory loading: each rank reads its own slices now
            self.model = self.model_wrapped = fill_shards(self.accelerator, self.model)
        self.shift_labels = shift_labels
        self.token_metrics = token_metrics
        self.eval_data_collator = eval_data_collator
        self.labelled_positions_only = labelled_positions_only
        self.batch_observers = list(batch_observers)  # observe(batch) for each training batch, in this process
        self.length_megabatch = length_megabatch
        self.chunked_loss = chunked_loss and shift_labels and not labelled_positions_only
        self._said_loss_path = False  # the log names the loss path once
        self.rdrop_alpha = rdrop_alpha
        # the last token-metrics evaluation's per-row loss sums and token counts (this process's rows)
        self.last_eval_blocks: tuple[list[float], list[int]] | None = None
        if rdrop_alpha and not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules()):
            log.warning("objective.rdrop_alpha=%s has no effect: the model has no dropout (both samples agree); "
                        "set its dropout (e.g. +model.config.hidden_dropout_prob=0.1) or rdrop_alpha=0", rdrop_alpha)
        if not any(isinstance(cb, TrainLossTally) for cb in self.callback_handler.callbacks):
            self.add_callback(TrainLossTally())

    def create_accelerator_and_postprocess(self) -> None:
        from ptft_hf.training.fsdp_cpu import fsdp_on_cpu

        with fsdp_on_cpu(self.args):
            super().create_accelerator_and_postprocess()

    def get_train_dataloader(self) -> Any:
        """The stock DataLoader, but a stream is read as it comes (each rank its own) and, with
        `length_megabatch`, length grouping uses `ShuffledLengthGroupedSampler`."""
        if self._trains_on_stream():
            collator = member(self, COLLATOR_WITHOUT_UNUSED_COLUMNS)(self.data_collator, description="training")
            return torch.utils.data.DataLoader(self.train_dataset, batch_size=self._device_batch_size(), collate_fn=collator)
        if (self.args.train_sampling_strategy != "group_by_length" or not self.length_megabatch
                or self.train_dataset is None or not hasattr(self.train_dataset, "column_names")):
            return super().get_train_dataloader()
        return member(self, GET_DATALOADER)(dataset=self.train_dataset, description="Training",
                                            batch_size=self._device_batch_size(),
                                            sampler_fn=self._length_grouped_sampler, is_training=True)

    def _length_grouped_sampler(self, dataset: Any) -> ShuffledLengthGroupedSampler:
        """For the training set as the DataLoader gets it (columns forward() does not take removed)."""
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # grouped by the global batch: accelerate deals each process consecutive per-device slices of
        # this order, so a step of N processes x B rows holds the rows of one process's N*B batch
        return ShuffledLengthGroupedSampler(self._example_lengths(dataset), self._device_batch_size() * self.args.world_size,
                                            self.length_megabatch, seed=seed)

    def _device_batch_size(self) -> int:
        return member(self, TRAIN_BATCH_SIZE)

    def _trains_on_stream(self) -> bool:
        return isinstance(self.train_dataset, (PackedStream, MixedStream))

    def stream_blocks_trained(self, steps: int) -> int:
        """Blocks this rank's stream gave to the first `steps` optimiser steps."""
        return steps * self._device_batch_size() * self.args.gradient_accumulation_steps

    def _example_lengths(self, dataset: Any) -> list[int]:
        """The `length` column the objectives write; the Trainer drops it (not a model input) before
        the sampler is built, so it is read from the unfiltered training set when that has it."""
        name = self.args.length_column_name
        for source in (dataset, self.train_dataset):
            if name in getattr(source, "column_names", ()) and len(source) == len(dataset):
                return list(source[name])
        return [len(ids) for ids in dataset["input_ids"]]

    # ---- safety and resume ----

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        for observer in self.batch_observers:
            observer.observe(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):  # the Trainer syncs on this value every step anyway
            raise NonFiniteLoss(self.state.global_step + 1, float(loss.detach().float().mean()))
        self._loss_tally().add(loss)  # what the Trainer adds to its own running sum, kept through checkpoints
        return loss

    def _loss_tally(self) -> TrainLossTally:
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, TrainLossTally))

    def save_model(self, output_dir: str | None = None, *args: Any, **kwargs: Any) -> None:
        """The Trainer's `save_model`, without `training_args.bin` (a pickle of every TrainingArguments
        field, `hub_token` included; resume does not read it). The Trainer saves each checkpoint's
        weights through here, before its `trainer_state.json`: a checkpoint is refused if a trained
        weight is not finite, and gets what resuming needs besides (a stream's position, and with
        FSDP's sharded checkpoints the tokenizer)."""
        folder = output_dir if output_dir is not None else self.args.output_dir
        checkpoint = self.is_in_train and os.path.basename(os.path.normpath(folder)) == \
            f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if checkpoint:
            self._refuse_non_finite_weights()
        super().save_model(output_dir, *args, **kwargs)
        self._drop_training_args(folder)
        if checkpoint:
            self._save_resume_extras(folder)

    def _refuse_non_finite_weights(self) -> None:
        for name, param in self.model.named_parameters():  # a finite loss can still leave inf weights
            # trained weights only: frozen ones do not change (and 4-bit weights stored in a float
            # dtype for FSDP, bnb_4bit_quant_storage, are packed bytes, not numbers)
            if param.requires_grad and param.is_floating_point() and not bool(torch.isfinite(param).all()):
                raise NonFiniteLoss(self.state.global_step, float("nan"), what=f"weight {name}")

    def _drop_training_args(self, folder: str) -> None:
        path = os.path.join(folder, TRAINING_ARGS_NAME)
        if self.args.should_save and os.path.exists(path):
            os.remove(path)

    def _save_resume_extras(self, folder: str) -> None:
        if self._saves_sharded_checkpoints() and self.is_world_process_zero() and self.processing_class is not None:
            # the Trainer's save_model writes nothing for sharded checkpoints, tokenizer included; a
            # resumed run reads the tokenizer it trained with from here (before trainer_state.json)
            self.processing_class.save_pretrained(folder)
        if self._trains_on_stream():
            os.makedirs(folder, exist_ok=True)
            position = self.train_dataset.state_at(self.stream_blocks_trained(self.state.global_step))
            with open(os.path.join(folder, STREAM_STATE.format(rank=self.args.process_index)), "w") as f:
                json.dump({"world_size": self.args.world_size, "position": position}, f)

    def _saves_sharded_checkpoints(self) -> bool:
        return self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        if isinstance(resume_from_checkpoint, str):
            # the Trainer restores callback states only with restore_callback_states_from_checkpoint
            state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME))
            saved = state.stateful_callbacks.get(TrainLossTally.__name__)
            if isinstance(saved, dict):
                for key, value in saved["args"].items():
                    setattr(self._loss_tally(), key, value)
            if self._trains_on_stream():
                self._resume_stream(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self.args.world_size > 1:  # token counts of the whole run, not of this rank's batches
            for observer in self.batch_observers:
                if hasattr(observer, "sum_across_processes"):
                    observer.sum_across_processes(
                        lambda t: self.accelerator.reduce(t.to(self.args.device), reduction="sum").cpu())
        mean = self._loss_tally().whole_run_loss(output.training_loss, self.state.global_step)
        return TrainOutput(output.global_step, mean, {**output.metrics, "train_loss": mean})

    def _resume_stream(self, checkpoint: str) -> None:
        """Continue the stream where the checkpoint's position says; without one (a checkpoint of
        another world size), the Trainer skips the batches already trained by reading them."""
        path = os.path.join(checkpoint, STREAM_STATE.format(rank=self.args.process_index))
        saved = json.loads(open(path).read()) if os.path.exists(path) else {}
        if saved.get("world_size") != self.args.world_size:
            log.warning("%s holds no stream position for rank %d of %d processes: the stream is read again up to "
                        "its step", checkpoint, self.args.process_index, self.args.world_size)
            return
        self.train_dataset.load_state_dict(saved["position"])
        self.args.ignore_data_skip = True  # the stream starts after the trained blocks already
        log.info("the training stream continues from %s", path)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Every log line, with the training losses a resumed run carries from its checkpoint
        folded in as an uninterrupted run would have them (see `TrainLossTally`)."""
        tally = self._loss_tally()
        if "train_loss" in logs and "train_runtime" in logs:  # the end-of-training summary
            logs = {**logs, "train_loss": tally.whole_run_loss(logs["train_loss"], self.state.global_step)}
        elif "loss" in logs and self.is_in_train:  # the mean training loss since the previous line
            logs = {**logs, "loss": tally.logged(logs["loss"], self.state.global_step)}
        super().log(logs, start_time)

    def _head_scope(self, model: Any, labels: torch.Tensor):
        if not self.labelled_positions_only:
            return contextlib.nullcontext()
        return predict_only_at(self.accelerator.unwrap_model(model), labels != IGNORE_INDEX)  # DDP wraps the model

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        num_items_in_batch = exact_item_count(num_items_in_batch)  # FSDP's bf16 cast would round a float count
        labels = inputs.get("labels")
        if self.rdrop_alpha and labels is not None and not return_outputs and model.training:
            # normalised as the stock loss would be: by the accumulated batch's items where the label
            # smoother does so, else per micro-batch (transformers' classifiers ignore num_items_in_batch)
            scaled = self.label_smoother is not None and self.model_accepts_loss_kwargs and num_items_in_batch is not None
            loss = rdrop_loss(model, inputs, self.rdrop_alpha, self.args.label_smoothing_factor,
                              num_items_in_batch if scaled else None)
            return self._scaled_across_devices(loss, num_items_in_batch)
        head = self._chunk_head(model) if labels is not None and not return_outputs and "shift_labels" not in inputs else None
        if head is not None:
            if not self._said_loss_path:
                self._said_loss_path = True
                log.info("loss: from the last hidden states, %d positions per chunk (objective.chunked_loss)%s",
                         chunk_rows(head), ", the head gathered from FSDP's shards" if self.is_fsdp_enabled else "")
            with hidden_states_as_logits(head):
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            with self.accelerator.autocast():  # accelerate autocasts only the model's forward
                loss = linear_cross_entropy(outputs.logits, head, labels, shift=True, num_items_in_batch=num_items_in_batch)
            return self._scaled_across_devices(loss, num_items_in_batch)
        with self._head_scope(model, labels) if labels is not None else contextlib.nullcontext():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _scaled_across_devices(self, loss: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
        """A loss normalised by the items of every process, scaled back as Trainer.compute_loss does."""
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss

    def _chunk_head(self, model: Any) -> torch.nn.Linear | None:
        """The head to compute the loss from hidden states with, or None for the stock loss: not
        with label smoothing (the stock smoother), DeepSpeed (ZeRO-3 empties the head's weight
        outside forward), Liger kernels (`use_liger_kernel`: their fused linear cross-entropy does
        the same inside the model's forward), or DDP training of an untied head (DDP would see its
        weight unused in forward, then get its gradient). Under FSDP2 the head's weight is gathered
        whole for the loss and its gradient reduce-scattered by FSDP (`training.sharded_head`), so
        the full logits of a 151,936-token vocabulary are never built where memory is tightest."""
        if (not self.chunked_loss or self.label_smoother is not None or self.is_deepspeed_enabled
                or getattr(self.args, "use_liger_kernel", False)):
            return None
        unwrapped = self.accelerator.unwrap_model(model)
        head = chunkable_head(unwrapped)
        if head is not None and self.args.world_size > 1 and head.weight.requires_grad and not self.is_fsdp_enabled:
            embeddings = unwrapped.get_input_embeddings()
            if embeddings is None or embeddings.weight is not head.weight:
                return None
        return head

    def get_eval_dataloader(self, eval_dataset: Any = None):
        """Evaluation may batch differently from training (fixed MLM masks, no padding counter)."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def _model_for_evaluation(self) -> Any:
        """The model to evaluate. Before training an FSDP or DeepSpeed model is still unwrapped on
        the CPU (the Trainer leaves its placement to accelerate) while batches go to `args.device`:
        FSDP's goes to the device whole (accelerate shards it in `train`; preparing it alone here
        is refused under FSDP2, which wants the optimizer with it), DeepSpeed's is prepared for
        inference as the stock evaluation loop does."""
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled) or len(member(self.accelerator, ACCELERATOR_MODELS)) > 0:
            return self.model
        if self.is_fsdp_enabled:
            placed = getattr(self.model, "hf_quantizer", None) is not None or self.model.device == self.args.device
            return self.model if placed else self.model.to(self.args.device)  # 4-bit models are placed at load
        if self.deepspeed is None:
            deepspeed_init(self, num_training_steps=0, inference=True)
        self.model_wrapped = self.deepspeed = self.accelerator.prepare(self.model)
        return self.model_wrapped

    def save_final_model(self, output_dir: str) -> None:
        """`save_model`, called on every rank: under FSDP or ZeRO-3 the full weights are gathered from
        all of them; rank 0 writes. With FSDP's sharded checkpoints the Trainer's `save_model` writes
        nothing, so the weights are gathered here and saved as `save_model` would."""
        if self._saves_sharded_checkpoints():
            state_dict = self.accelerator.get_state_dict(self.model)  # every rank takes part
            if self.is_world_process_zero():  # as save_model would (it writes nothing here)
                unwrapped = self.accelerator.unwrap_model(self.model)
                unwrapped.save_pretrained(output_dir, state_dict=retied(state_dict, unwrapped))
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
        elif weights_are_sharded() or self.is_world_process_zero():
            self.save_model(output_dir)  # a PeftModel saves only its adapter

    def _weights_on_rank_0_only(self) -> bool:
        """FSDP's low-memory loading before `train` shards the model: rank 0 read the checkpoint, the
        other ranks hold empty weights until accelerate sends them their shards
        (`training.low_memory_loading`). A 4-bit base is loaded by every rank."""
        if not (self.is_fsdp_enabled and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() == "true"):
            return False
        if len(member(self.accelerator, ACCELERATOR_MODELS)) > 0 or isinstance(self.model, FSDPModule):
            return False  # sharded already (or read by slices on every rank: `models.sharded_loading`)
        return not any(type(p).__name__ == "Params4bit" for p in self.model.parameters())

    @staticmethod
    def _unsplit(dataloader: Any) -> Any:
        """The evaluation batches of every rank, in order, from accelerate's per-rank loader."""
        from torch.utils.data import DataLoader

        batches = getattr(dataloader.batch_sampler, "batch_sampler", dataloader.batch_sampler)
        return DataLoader(dataloader.dataset, batch_sampler=batches, collate_fn=dataloader.collate_fn)

    def _idle_eval_forwards(self, dataloader: Any) -> int:
        """Forwards this rank runs, results unused, so that every rank runs as many as the one
        with the most eval batches. Evaluation is uneven (each row once); under FSDP or ZeRO-3
        each forward gathers the weights from every rank, so the counts must match. 0 otherwise."""
        if not weights_are_sharded():
            return 0
        ours = len(dataloader)
        most = self.accelerator.reduce(torch.tensor([ours], device=self.args.device), reduction="max")
        return int(most.item()) - ours

    def _idle_batch(self, dataloader: Any) -> dict[str, Any]:
        """One eval row, collated and on the device (a rank may have no batch of its own)."""
        return member(self, PREPARE_INPUTS)(dataloader.collate_fn([dataloader.dataset[0]]))

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        target = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(target, dict) or not self.token_metrics:  # per-name sets / stock metrics loop
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        even_batches = self.accelerator.even_batches
        # several processes: each row once (accelerate would repeat rows to even out the last batches,
        # counting their tokens twice); this loop runs no collective per batch, so uneven is safe
        self.accelerator.even_batches = False
        try:
            dataloader = self.get_eval_dataloader(eval_dataset)
        finally:
            self.accelerator.even_batches = even_batches
        rank_0_alone = self._weights_on_rank_0_only()
        if rank_0_alone:  # every row on rank 0, none elsewhere; the totals are summed across ranks as usual
            dataloader = self._unsplit(dataloader) if self.is_world_process_zero() else []
        model = self._model_for_evaluation()
        was_training = model.training
        model.eval()
        totals = TokenLossAccumulator()
        start = time.time()
        batches = 0
        head = self._chunk_head(model)
        idle_forwards = 0 if rank_0_alone else self._idle_eval_forwards(dataloader)
        with torch.no_grad():
            for _ in range(idle_forwards):  # sharded weights: as many forwards as the busiest rank
                model(**{k: v for k, v in self._idle_batch(dataloader).items() if k != "labels"})
            for batch in dataloader:
                batch = member(self, PREPARE_INPUTS)(batch)
                labels = batch.pop("labels")
                with self.compute_loss_context_manager(), self._head_scope(model, labels), \
                        hidden_states_as_logits(head) if head is not None else contextlib.nullcontext():
                    outputs = model(**batch)
                rows = {}
                if self.labelled_positions_only:  # the eval row of each labelled position: per-row sums
                    labelled = labels != IGNORE_INDEX
                    rows = {"row_of": labelled.nonzero()[:, 0], "rows": labels.shape[0]}
                    labels = labels[labelled].unsqueeze(0)
                if head is not None:  # hidden states in, projected a chunk at a time
                    with self.accelerator.autocast():
                        totals.update(outputs.logits, labels, shift=self.shift_labels, head=head,
                                      chunk_rows=chunk_rows(head), **rows)
                else:
                    totals.update(outputs.logits, labels, shift=self.shift_labels, **rows)
                batches += 1
        if self.args.world_size > 1:
            reduced = self.accelerator.reduce(totals.as_tensor().to(self.args.device), reduction="sum")
            totals = totals.with_totals(reduced.cpu())
        if was_training:
            model.train()
        self.last_eval_blocks = (totals.block_loss, totals.block_tokens)  # the perplexity's interval (recipe)
        metrics = totals.metrics(metric_key_prefix)
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=None, num_steps=batches, num_tokens=totals.tokens))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
