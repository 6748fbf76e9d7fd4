"""W1 (and W6), causal-LM pretraining of a GPT-2 built from a config, on WikiText-2.

W1 is a small GPT-2 on the CPU; W6 is GPT-2 124M's shape (12 x 768, block 1024, vocabulary 50,257)
in bf16 on one GPU. Both run the same two arms below, each reading its sizes from
`spec[workload]` and its files from the set-up's keys for that workload (`spec_key`).

ours:     the project's default configuration (model=tiny_gpt2 at the workload's sizes,
          objective=clm, trainer=cpu, or trainer=gpu on CUDA), built with the project's own code
          path (compose -> objective's prepare -> recipe.build_trainer -> PtftTrainer).
baseline: a plain `run_clm.py`: datasets.map(tokenize) + map(group_texts), default_data_collator,
          AutoModelForCausalLM.from_config(GPT2Config(sizes)), `TrainingArguments` defaults apart
          from batch size, steps, seed, learning rate, use_cpu, report_to and save_strategy.

Same tokenizer folder, sizes, steps, batch size, seed and learning rate; evaluation and saving
during training are off in both (they are not training throughput). After training both models
are scored on the same held-out blocks (see prepare.py).
"""

from __future__ import annotations

import time
from itertools import chain
from pathlib import Path
from typing import Any

from benchmarks.common import (configure, cuda_memory, environment, plain, project_trainer, project_trainer_field,
                               step_seconds, step_timer, timed_window)


# --- run_clm.py's data functions, as the script writes them ---------------------------------

def tokenize_fn(tokenizer: Any, text_column_name: str = "text"):
    def tokenize_function(examples):
        return tokenizer(examples[text_column_name])

    return tokenize_function


def group_texts_fn(block_size: int):
    def group_texts(examples):
        # Concatenate all texts.
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        # We drop the small remainder of every map batch.
        total_length = (total_length // block_size) * block_size
        # Split by chunks of max_len.
        result = {
            k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
            for k, t in concatenated_examples.items()
        }
        result["labels"] = result["input_ids"].copy()
        return result

    return group_texts


# --- shared scoring ------------------------------------------------------------------------

def eval_loss(model: Any, blocks_file: str, batch_size: int, device: str) -> float:
    """Mean next-token loss (nats) over every predicted position of the saved blocks."""
    import numpy as np
    import torch

    blocks = torch.from_numpy(np.load(blocks_file))
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, blocks.shape[0], batch_size):
            ids = blocks[start : start + batch_size].to(device)
            loss = model(input_ids=ids, labels=ids).loss
            n = ids.shape[0] * (ids.shape[1] - 1)
            total += float(loss) * n
            count += n
    return total / max(count, 1)


def run_clm_metrics():
    """run_clm.py's evaluation hooks: logits reduced to argmax per batch, accuracy at the end."""
    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        labels = labels[:, 1:].reshape(-1)
        preds = preds[:, :-1].reshape(-1)
        return {"accuracy": float((preds == labels).mean())}

    return preprocess_logits_for_metrics, compute_metrics


def trainer_eval(trainer: Any, blocks_file: str, with_mask_and_labels: bool) -> dict[str, Any]:
    """Each arm's own `trainer.evaluate()` on the same blocks: its evaluation loop and eval batch
    size (the project's token-weighted loop keeps no logits; run_clm's gathers argmax ids for
    accuracy). Seconds, tokens/s, the loss it reports and the resident-memory growth."""
    import numpy as np
    from datasets import Dataset

    from benchmarks.common import proc_status, reset_peak

    blocks = np.load(blocks_file)
    columns = {"input_ids": blocks.tolist()}
    if with_mask_and_labels:  # what group_texts hands run_clm's Trainer
        columns.update(attention_mask=np.ones_like(blocks).tolist(), labels=blocks.tolist())
    else:  # the project generates samples at every evaluation: not part of the loop compared here
        from ptft_hf.training.callbacks import SampleCallback

        trainer.remove_callback(SampleCallback)
    dataset = Dataset.from_dict(columns)
    before = proc_status()
    reset_peak()
    started = time.perf_counter()
    metrics = trainer.evaluate(dataset)
    seconds = time.perf_counter() - started
    peak = proc_status().get("VmHWM", 0.0)
    return {"seconds": round(seconds, 3), "tokens_per_s": blocks.size / seconds, "loss": metrics.get("eval_loss"),
            "batch_size": trainer.args.per_device_eval_batch_size,
            "rss_growth_mb": round(peak - before.get("VmRSS", 0.0), 1)}


def matmul_parameters(model: Any) -> dict[str, int]:
    """Parameters, and the N of the FLOPs formula: every weight outside the input and position
    embeddings, plus the d×V output projection (tied with the input embedding in GPT-2)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed = base.get_input_embeddings().weight
    skip = {id(embed)} | {id(p) for n, p in base.named_parameters() if n.endswith("wpe.weight")}
    blocks = sum(p.numel() for p in base.parameters() if id(p) not in skip)
    return {"parameters": int(sum(p.numel() for p in base.parameters())),
            "matmul_parameters": int(blocks + embed.numel())}


def spec_key(workload: str, name: str) -> str:
    """The set-up's result key of `name` for `workload`: W1's keep their first names (bpe_dir,
    eval_blocks_plain, ...), other workloads' carry the workload as a prefix (w6_bpe_dir)."""
    return name if workload == "w1" else f"{workload}_{name}"


def _result(spec: dict[str, Any], trainer: Any, timer: Any, train_result: Any, model: Any, device: str,
            prep_s: float, extra: dict[str, Any], baseline_eval: bool = False, workload: str = "w1") -> dict[str, Any]:
    from benchmarks.mfu import lm_flops_per_token

    s = spec[workload]
    warmup = s["warmup_steps"]
    steps, seconds = timed_window(timer, warmup)
    tokens = steps * s["batch_size"] * s["block_size"]
    per_step = sorted(step_seconds(timer, warmup))
    counts = matmul_parameters(model)
    fpt = lm_flops_per_token(counts["matmul_parameters"], s["n_layer"], s["n_embd"], s["block_size"])
    started = time.perf_counter()
    plain_blocks, packed_blocks = spec[spec_key(workload, "eval_blocks_plain")], spec[spec_key(workload, "eval_blocks_packed")]
    losses = {"eval_loss": eval_loss(model, plain_blocks, s["batch_size"], device),
              "eval_loss_packed": eval_loss(model, packed_blocks, s["batch_size"], device)}
    eval_s = time.perf_counter() - started
    own_eval = trainer_eval(trainer, plain_blocks, with_mask_and_labels=baseline_eval)
    args = trainer.args
    config = model.config
    return {
        "steps": len(timer.ends), "timed_steps": steps, "timed_s": round(seconds, 4), "tokens_timed": tokens,
        "tokens_per_s": tokens / seconds,
        "step_s_median": per_step[len(per_step) // 2], "step_s_min": per_step[0], "step_s_max": per_step[-1],
        **losses, "eval_s": round(eval_s, 2), "trainer_eval": own_eval,
        "trainer_eval_tokens_per_s": own_eval["tokens_per_s"], "trainer_eval_rss_growth_mb": own_eval["rss_growth_mb"],
        "train_loss": float(train_result.training_loss), "logged_losses": timer.losses,
        **counts, "flops_per_token": fpt, "achieved_gflops_per_s": fpt * tokens / seconds / 1e9,
        "prep_s": round(prep_s, 2), "device": device,
        "settings": {"optim": plain(args.optim), "learning_rate": args.learning_rate,
                     "lr_scheduler_type": plain(args.lr_scheduler_type), "warmup_steps": args.warmup_steps,
                     "weight_decay": args.weight_decay, "bf16": args.bf16, "logging_steps": args.logging_steps,
                     "dropout": {"resid": config.resid_pdrop, "embd": config.embd_pdrop, "attn": config.attn_pdrop},
                     "attn_implementation": getattr(config, "_attn_implementation", None),
                     "vocab_size": config.vocab_size},
        **extra, "env": environment(),
    }


def ours(spec: dict[str, Any], run_dir: Path, workload: str = "w1") -> dict[str, Any]:
    device = configure(spec["threads"])
    trainer, prepared, timer, overrides, prep_s = ours_trainer(spec, run_dir, device, spec[workload]["batch_size"], workload)
    profiled = spec[workload].get("profile_steps", 0) if spec.get("rep", 0) == 0 else 0
    profiler = last_steps_profiler(spec[workload]["steps"] - profiled, device) if profiled else None
    if profiler is not None:
        trainer.add_callback(profiler)
    train_result = trainer.train()
    extra = {"overrides": overrides, "train_blocks": len(prepared.train_dataset), **cuda_memory(device)}
    if profiler is not None:  # the profiled steps run slower: timed up to where profiling began
        timer.ends = timer.ends[:-profiled]
        extra.update(profile=profiler.table, profiled_steps=profiled)
    return _result(spec, trainer, timer, train_result, prepared.model, device, prep_s, extra, workload=workload)


def last_steps_profiler(first_step: int, device: str, rows: int = 30):
    """A TrainerCallback that runs torch.profiler from optimiser step `first_step` to the end of
    training and keeps the top `rows` operators by self device time (CPU time on a CPU): where
    the time of a step goes, for a run that falls short of its MFU target."""
    import torch
    from transformers import TrainerCallback

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class LastStepsProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.profile: Any = None
            self.table = ""

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: D102
            if self.profile is None and state.global_step >= first_step:
                self.profile = torch.profiler.profile(activities=activities)
                self.profile.__enter__()

        def on_train_end(self, args, state, control, **kwargs):  # noqa: D102
            if self.profile is not None:
                self.profile.__exit__(None, None, None)
                key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
                self.table = self.profile.key_averages().table(sort_by=key, row_limit=rows)

    return LastStepsProfiler()


def ours_trainer(spec: dict[str, Any], run_dir: Path, device: str, per_device_batch: int,
                 workload: str = "w1") -> tuple[Any, Any, Any, list[str], float]:
    """The project's trainer for W1 or W6 (trainer, prepared, step timer, overrides, preparation
    seconds), `per_device_batch` rows per process (W5 runs W1's on several processes). The
    workload's `ours_overrides` (W6: none by default) are appended: settings a device run tries."""
    s = spec[workload]
    started = time.perf_counter()
    overrides = [
        "model=tiny_gpt2", f"model.config.n_layer={s['n_layer']}", f"model.config.n_embd={s['n_embd']}",
        f"model.config.n_head={s['n_head']}", f"model.config.n_positions={s['n_positions']}",
        "model.tokenizer.train=false", f"model.tokenizer.name_or_path={spec[spec_key(workload, 'bpe_dir')]}",
        "data=wikitext2", f"data.path={spec['files']['wikitext_train']}", f"data.eval_path={spec['files']['wikitext_eval']}",
        # validation = the test file: the baseline trains on every row of data.path, so must ours (nothing
        # here is chosen on validation; a carve would train ours on 5% fewer rows)
        f"data.validation_path={spec['files']['wikitext_eval']}",
        "objective=clm", f"objective.block_size={s['block_size']}",
        *(["trainer=gpu"] if device == "cuda" else []),
        f"trainer.per_device_train_batch_size={per_device_batch}", f"trainer.max_steps={s['steps']}",
        "trainer.eval_strategy=no", "trainer.save_strategy=no", "trainer.disable_tqdm=true", f"seed={spec['seed']}",
        *(["trainer.dataloader_drop_last=true"] if workload == "w6" else []),
        *s.get("ours_overrides", []),
    ]
    timer = step_timer()
    trainer, prepared, _ = project_trainer(overrides, run_dir, [timer])
    return trainer, prepared, timer, overrides, time.perf_counter() - started


# W6's baseline shares the project's GPU schedule and weight decay ("the same optimizer"); W1's
# keeps run_clm's defaults apart from the learning rate, as recorded in benchmarks/README.md
W6_SHARED_TRAINER_FIELDS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay")


def baseline(spec: dict[str, Any], run_dir: Path, workload: str = "w1") -> dict[str, Any]:
    device = configure(spec["threads"])
    import datasets
    from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, Trainer, TrainingArguments,
                              default_data_collator, set_seed)

    s = spec[workload]
    started = time.perf_counter()
    set_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec[spec_key(workload, "bpe_dir")])
    raw = datasets.load_dataset("text", data_files={"train": [spec["files"]["wikitext_train"]]})["train"]
    tokenized = raw.map(tokenize_fn(tokenizer), batched=True, remove_columns=raw.column_names,
                        desc="Running tokenizer on dataset")
    lm_dataset = tokenized.map(group_texts_fn(s["block_size"]), batched=True,
                               desc=f"Grouping texts in chunks of {s['block_size']}")
    config = GPT2Config(n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"], n_positions=s["n_positions"],
                        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config)
    shared = W6_SHARED_TRAINER_FIELDS if workload == "w6" else ("learning_rate",)
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=s["batch_size"], max_steps=s["steps"],
        seed=spec["seed"], use_cpu=device == "cpu", bf16=device == "cuda",
        report_to="none", save_strategy="no", disable_tqdm=True, **{k: project_trainer_field(device, k) for k in shared},
        dataloader_drop_last=workload == "w6",  # W6: ~8 steps an epoch; a partial last batch would be counted as full
    )
    timer = step_timer()
    preprocess_logits_for_metrics, compute_metrics = run_clm_metrics()
    trainer = Trainer(model=model, args=args, train_dataset=lm_dataset, processing_class=tokenizer,
                      data_collator=default_data_collator, callbacks=[timer], compute_metrics=compute_metrics,
                      preprocess_logits_for_metrics=preprocess_logits_for_metrics)
    prep_s = time.perf_counter() - started
    train_result = trainer.train()
    return _result(spec, trainer, timer, train_result, model, device, prep_s, {"train_blocks": len(lm_dataset), **cuda_memory(device)},
                   baseline_eval=True, workload=workload)
