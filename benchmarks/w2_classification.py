"""W2, sequence classification of BANKING77 (77 intents) with a BERT built from a config.

ours:    the project's classification objective with its defaults (dynamic padding through
         DataCollatorWithPadding, length-grouped batches), through compose -> prepare ->
         recipe.build_trainer -> PtftTrainer.
pad128:  `run_glue.py`'s default: tokenizer(padding="max_length", max_length=128, truncation=True),
         default_data_collator.
dynamic: `run_glue.py --pad_to_max_length false`: DataCollatorWithPadding, random batches (no
         length grouping).

W2 isolates batching: all three arms use the same model config, tokenizer folder, steps, batch
size, seed and the project's trainer fields (learning rate, schedule, warm-up, weight decay), so
speed and accuracy differences come from how batches are formed. Accuracy is measured after
training on the whole test split by one shared function.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import (BatchRecorder, configure, environment, plain, project_trainer, project_trainer_field,
                               step_seconds, step_timer, timed_window, totals)

# the project's schedule, shared by every arm; the learning rate is the spec's (w2.learning_rate):
# post-LN BERT trained from random weights diverges at the CPU preset's 1e-3 (every arm at chance)
SHARED_TRAINER_FIELDS = ("lr_scheduler_type", "warmup_steps", "weight_decay")


def accuracy(model: Any, tokenizer: Any, test_csv: str, label2id: dict[str, int], max_length: int, device: str) -> float:
    """Accuracy on the test split, batches padded to their longest text (padding cannot change
    a BERT prediction: the attention mask hides it)."""
    import csv

    import torch

    with open(test_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            batch = tokenizer([r["text"] for r in chunk], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            predicted = model(**batch).logits.argmax(-1).tolist()
            correct += sum(int(p == label2id[r["category"]]) for p, r in zip(predicted, chunk))
    return correct / max(len(rows), 1)


def parameter_split(model: Any) -> dict[str, int]:
    """Encoder-block parameters (matmuls on every token) and head parameters (pooler and
    classifier, on [CLS] only); embeddings are look-ups."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = sum(p.numel() for n, p in base.named_parameters() if ".encoder." in f".{n}")
    head = sum(p.numel() for n, p in base.named_parameters() if "pooler" in n or "classifier" in n)
    return {"parameters": int(sum(p.numel() for p in base.parameters())), "block_parameters": int(blocks),
            "head_parameters": int(head)}


def _result(spec: dict[str, Any], trainer: Any, timer: Any, recorder: BatchRecorder, model: Any, tokenizer: Any,
            label2id: dict[str, int], device: str, prep_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.mfu import encoder_step_flops

    s = spec["w2"]
    warmup = s["warmup_steps"]
    steps, seconds = timed_window(timer, warmup)
    kept = totals(recorder.kept(len(timer.ends), warmup))
    every = totals(recorder.batches[: len(timer.ends)])
    per_step = sorted(step_seconds(timer, warmup))
    params = parameter_split(model)
    flops = encoder_step_flops(params["block_parameters"], params["head_parameters"], s["num_hidden_layers"],
                               s["hidden_size"], kept["tokens"], kept["sum_len_sq"], kept["examples"])
    started = time.perf_counter()
    acc = accuracy(model, tokenizer, spec["files"]["banking_test"], label2id, s["max_length"], device)
    args = trainer.args
    return {
        "steps": len(timer.ends), "timed_steps": steps, "timed_s": round(seconds, 4), "timed_batches": kept,
        "examples_per_s": kept["examples"] / seconds, "tokens_per_s": kept["tokens"] / seconds,
        "padded_tokens_per_s": (kept["tokens"] + kept["padded_tokens"]) / seconds,
        "padded_share": every["padded_tokens"] / max(every["tokens"] + every["padded_tokens"], 1),
        "mean_length": every["tokens"] / max(every["examples"], 1),
        "step_s_median": per_step[len(per_step) // 2], "step_s_min": per_step[0], "step_s_max": per_step[-1],
        "accuracy": acc, "eval_s": round(time.perf_counter() - started, 2), "num_labels": len(label2id),
        **params, "model_flops_timed": flops, "achieved_gflops_per_s": flops / seconds / 1e9,
        "prep_s": round(prep_s, 2), "device": device,
        "settings": {"optim": plain(args.optim), "bf16": args.bf16, "learning_rate": args.learning_rate, "train_sampling_strategy": plain(args.train_sampling_strategy),
                     **{k: plain(getattr(args, k)) for k in SHARED_TRAINER_FIELDS}, "collator": type(trainer.data_collator).__name__,
                     "attn_implementation": getattr(model.config, "_attn_implementation", None)},
        **extra, "env": environment(),
    }


def ours(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    device = configure(spec["threads"])
    s = spec["w2"]
    started = time.perf_counter()
    overrides = [
        "model=tiny_bert", f"model.config.num_hidden_layers={s['num_hidden_layers']}",
        f"model.config.num_attention_heads={s['num_attention_heads']}", f"model.config.hidden_size={s['hidden_size']}",
        f"model.config.intermediate_size={s['intermediate_size']}",
        f"model.config.max_position_embeddings={s['max_position_embeddings']}",
        "model.tokenizer.train=false", f"model.tokenizer.name_or_path={spec['wordpiece_dir']}",
        "objective=classification", f"objective.max_length={s['max_length']}",
        "data=banking77", f"data.path={spec['files']['banking_train']}", f"data.eval_path={spec['files']['banking_test']}",
        # validation = the test file: the baseline trains on every row of data.path, so must ours (nothing
        # here is chosen on validation; a carve would train ours on 5% fewer rows)
        f"data.validation_path={spec['files']['banking_test']}",
        "data.label_column=category",
        *(["trainer=gpu"] if device == "cuda" else []),
        f"trainer.per_device_train_batch_size={s['batch_size']}", f"trainer.max_steps={s['steps']}",
        f"trainer.learning_rate={s['learning_rate']}", "trainer.eval_strategy=no", "trainer.save_strategy=no", "trainer.disable_tqdm=true", f"seed={spec['seed']}",
    ]
    timer = step_timer()
    trainer, prepared, tokenizer = project_trainer(overrides, run_dir, [timer])
    recorder = BatchRecorder()
    trainer.batch_observers.append(recorder)  # counts in this process, also with dataloader workers (CUDA preset)
    prep_s = time.perf_counter() - started
    trainer.train()
    return _result(spec, trainer, timer, recorder, prepared.model, tokenizer, prepared.model.config.label2id, device,
                   prep_s, {"overrides": overrides})


def _glue(spec: dict[str, Any], run_dir: Path, pad_to_max_length: bool) -> dict[str, Any]:
    """run_glue.py's preprocessing and Trainer set-up for a single-text CSV task."""
    device = configure(spec["threads"])
    import datasets
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DataCollatorWithPadding,
                              Trainer, TrainingArguments, default_data_collator, set_seed)

    s = spec["w2"]
    started = time.perf_counter()
    set_seed(spec["seed"])
    raw = datasets.load_dataset("csv", data_files={"train": spec["files"]["banking_train"],
                                                   "validation": spec["files"]["banking_test"]})
    # run_glue renames the label column to "label" and maps it in place; datasets 5 keeps an existing
    # column's type (large_string for CSV) when a function returns it, so the ids would come back
    # as strings. The names stay in "category" and the ids go to a new "label" column instead.
    label_list = raw["train"].unique("category")
    label_list.sort()  # Let's sort it for determinism
    label_to_id = {v: i for i, v in enumerate(label_list)}
    tokenizer = AutoTokenizer.from_pretrained(spec["wordpiece_dir"])
    config = BertConfig(num_hidden_layers=s["num_hidden_layers"], num_attention_heads=s["num_attention_heads"],
                        hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                        max_position_embeddings=s["max_position_embeddings"], vocab_size=len(tokenizer),
                        pad_token_id=tokenizer.pad_token_id, num_labels=len(label_list),
                        label2id=label_to_id, id2label={i: lab for lab, i in label_to_id.items()})
    model = AutoModelForSequenceClassification.from_config(config)
    padding = "max_length" if pad_to_max_length else False
    max_seq_length = min(s["max_length"], tokenizer.model_max_length)

    def preprocess_function(examples):
        result = tokenizer(examples["text"], padding=padding, max_length=max_seq_length, truncation=True)
        result["label"] = [(label_to_id[label] if label != -1 else -1) for label in examples["category"]]
        return result

    train_dataset = raw["train"].map(preprocess_function, batched=True, desc="Running tokenizer on dataset")
    collator = default_data_collator if pad_to_max_length else DataCollatorWithPadding(tokenizer)
    recorder = BatchRecorder(collator)
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=s["batch_size"], max_steps=s["steps"], seed=spec["seed"],
        use_cpu=device == "cpu", bf16=device == "cuda", report_to="none", save_strategy="no", disable_tqdm=True,
        learning_rate=s["learning_rate"], **{k: project_trainer_field(device, k, "classification") for k in SHARED_TRAINER_FIELDS},
    )
    timer = step_timer()
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=recorder, callbacks=[timer])
    prep_s = time.perf_counter() - started
    trainer.train()
    return _result(spec, trainer, timer, recorder, model, tokenizer, label_to_id, device, prep_s,
                   {"padding": padding or "dynamic"})


def pad128(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    return _glue(spec, run_dir, pad_to_max_length=True)


def dynamic(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    return _glue(spec, run_dir, pad_to_max_length=False)
