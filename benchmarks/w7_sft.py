"""W7, LoRA and QLoRA chat SFT of a Qwen2.5-0.5B-shaped model (built from a config) on BANKING77 as chat.

Each customer message is a user turn and its intent name the assistant's reply, rendered with the
model's ChatML template (Qwen2.5's default system prompt included): short, variable-length
conversations, where padding and the 151,936-word vocabulary projection cost most.

lora, qlora:              the project's SFT objective (compose -> prepare_sft -> build_trainer ->
                          PtftTrainer) with strategy=lora or qlora and `trainer=gpu` on CUDA, plus
                          the workload's `ours_overrides` (the full run: padding-free packing, and a
                          bf16 frozen base for LoRA on CUDA, as a user of the GPU preset would set).
lora_plain, qlora_plain:  what a user writes with transformers + peft + bitsandbytes: the chat
                          template applied per example, prompt tokens masked with -100,
                          `DataCollatorForSeq2Seq` dynamic padding, `get_peft_model` on
                          `target_modules="all-linear"`, QLoRA through `BitsAndBytesConfig(nf4, double
                          quantisation, bf16 compute)` and `prepare_model_for_kbit_training`, the plain
                          `Trainer`.

Both sides: the same checkpoint and tokenizer folder, rank, alpha, learning rate and schedule
(TrainingArguments' defaults: linear, no warm-up, no weight decay), batch of `batch_size`
conversations, steps, seed and gradient checkpointing. Reported: real (non-padding)
tokens per second over the steps after `warmup_steps`, the padded share, peak memory (CUDA:
`max_memory_allocated`; CPU: the resident high-water mark) and the training loss.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (BatchRecorder, configure, cuda_memory, environment, proc_status, project_trainer,
                               step_seconds, step_timer, timed_window, totals)

IGNORE = -100


def build_checkpoint(spec: dict[str, Any], files: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """The set-up's W7 part: a Qwen2 model at the workload's sizes with random weights (bf16 on
    CUDA, as the Hub checkpoint ships) and a byte-level BPE with Qwen2.5's special tokens and chat
    template trained on BANKING77's texts and intent names, saved as one folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ptft_hf.models.twins import FAMILIES, twin_tokenizer

    s = spec["w7"]
    with open(files["banking_train"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    tokenizer = twin_tokenizer("qwen2", [r["text"] for r in rows] + [r["category"] for r in rows], s["tokenizer_vocab"])
    config = AutoConfig.for_model(
        "qwen2", vocab_size=max(s["vocab_size"], len(tokenizer)), hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_key_value_heads"],
        max_position_embeddings=s["max_position_embeddings"], rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        architectures=[FAMILIES["qwen2"]["architecture"]])
    cuda = torch.cuda.is_available()
    torch.manual_seed(spec["seed"])
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    folder = out_dir / "w7_model"
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return {"w7_model_dir": str(folder), "w7_parameters": int(sum(p.numel() for p in model.parameters())),
            "w7_tokenizer_vocab": len(tokenizer)}


def _peak_memory(device: str) -> dict[str, Any]:
    """The arm's peak memory: CUDA allocations on a GPU, the resident high-water mark on a CPU."""
    if device == "cuda":
        return {"peak_memory_mb": cuda_memory(device)["cuda_peak_mb"], "memory_kind": "cuda max_memory_allocated"}
    return {"peak_memory_mb": proc_status().get("VmHWM"), "memory_kind": "resident high-water mark (VmHWM)"}


def _result(spec: dict[str, Any], trainer: Any, timer: Any, recorder: BatchRecorder, train_result: Any, model: Any,
            device: str, prep_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    s = spec["w7"]
    warmup = s["warmup_steps"]
    steps, seconds = timed_window(timer, warmup)
    kept = totals(recorder.kept(len(timer.ends), warmup))
    every = totals(recorder.batches[: len(timer.ends)])
    per_step = sorted(step_seconds(timer, warmup))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "steps": len(timer.ends), "timed_steps": steps, "timed_s": round(seconds, 4), "timed_batches": kept,
        "tokens_per_s": kept["tokens"] / seconds, "examples_per_s": kept["examples"] / seconds,
        "padded_share": every["padded_tokens"] / max(every["tokens"] + every["padded_tokens"], 1),
        "mean_length": every["tokens"] / max(every["examples"], 1),
        "step_s_median": per_step[len(per_step) // 2], "step_s_min": per_step[0], "step_s_max": per_step[-1],
        "train_loss": float(train_result.training_loss), "logged_losses": timer.losses,
        "trainable_parameters": int(trainable), "checkpoint_parameters": spec.get("w7_parameters"),
        "prep_s": round(prep_s, 2), "device": device, **_peak_memory(device),
        "settings": {"bf16": trainer.args.bf16, "optim": getattr(trainer.args.optim, "value", trainer.args.optim),
                     "gradient_checkpointing": s["gradient_checkpointing"], "collator": type(trainer.data_collator).__name__,
                     "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None)},
        **extra, "env": environment(),
    }


def ours(spec: dict[str, Any], run_dir: Path, strategy_name: str) -> dict[str, Any]:
    device = configure(spec["threads"])
    import torch

    s = spec["w7"]
    cuda = device == "cuda"
    started = time.perf_counter()
    overrides = [
        "model=pretrained", f"model.name_or_path={spec['w7_model_dir']}",
        "data=banking77", f"data.path={spec['files']['banking_train']}", f"data.eval_path={spec['files']['banking_test']}",
        # validation = the test file: the baseline trains on every row of data.path, so must ours (nothing
        # here is chosen on validation; a carve would train ours on 5% fewer rows)
        f"data.validation_path={spec['files']['banking_test']}",
        "data.label_column=null", "data.prompt_column=text", "data.response_column=category",
        "objective=sft", f"objective.max_length={s['max_length']}",
        f"strategy={strategy_name}", f"strategy.lora.r={s['lora_r']}", f"strategy.lora.lora_alpha={s['lora_alpha']}",
        f"strategy.gradient_checkpointing={str(s['gradient_checkpointing']).lower()}",
        *(["trainer=gpu"] if cuda else []),
        *(["strategy.quantization.bnb_4bit_compute_dtype=bfloat16"] if cuda and strategy_name == "qlora" else []),
        f"trainer.per_device_train_batch_size={s['batch_size']}", f"trainer.max_steps={s['steps']}",
        f"trainer.learning_rate={s['learning_rate']}", "trainer.eval_strategy=no", "trainer.save_strategy=no",
        # the plain script's optimiser settings (TrainingArguments' defaults): the same schedule both sides
        "trainer.lr_scheduler_type=linear", "trainer.warmup_steps=0", "trainer.weight_decay=0.0",
        "trainer.disable_tqdm=true", f"seed={spec['seed']}",
        *s.get("ours_overrides", []), *(s.get("ours_overrides_cuda_lora", []) if cuda and strategy_name == "lora" else []),
    ]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = step_timer()
    trainer, prepared, _ = project_trainer(overrides, run_dir, [timer])
    recorder = BatchRecorder()
    trainer.batch_observers.append(recorder)  # counts in this process, also with dataloader workers (CUDA preset)
    prep_s = time.perf_counter() - started
    train_result = trainer.train()
    return _result(spec, trainer, timer, recorder, train_result, prepared.model, device, prep_s,
                   {"overrides": overrides, "strategy": strategy_name, "side": "ours",
                    "labelled_tokens": prepared.metrics["data_train"]["labelled_tokens"]})


def encode_chat(tokenizer: Any, max_length: int):
    """The plain script's preprocessing: the whole conversation through the chat template, the
    prompt's tokens (the template up to the assistant's turn) masked from the loss."""
    def tokenize(example: dict[str, Any]) -> dict[str, list[int]]:
        messages = [{"role": "user", "content": example["text"]}, {"role": "assistant", "content": example["category"]}]
        prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages)["input_ids"][:max_length]
        labels = ([IGNORE] * len(prompt) + full[len(prompt):])[: len(full)]
        return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels}

    return tokenize


def plain(spec: dict[str, Any], run_dir: Path, quantized: bool) -> dict[str, Any]:
    device = configure(spec["threads"])
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)

    s = spec["w7"]
    cuda = device == "cuda"
    started = time.perf_counter()
    set_seed(spec["seed"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(spec["w7_model_dir"])
    raw = datasets.load_dataset("csv", data_files={"train": spec["files"]["banking_train"]})["train"]
    train = raw.map(encode_chat(tokenizer, s["max_length"]), remove_columns=raw.column_names)
    dtype = s.get("plain_dtype") or (torch.bfloat16 if cuda else torch.float32)  # "auto": as the checkpoint stores it
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantized:
        compute = torch.float32 if dtype == "auto" else dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": 0 if cuda else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(spec["w7_model_dir"], **kwargs)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=s["gradient_checkpointing"],
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif s["gradient_checkpointing"]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    recorder = BatchRecorder(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True))
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=s["batch_size"], max_steps=s["steps"],
        learning_rate=s["learning_rate"], seed=spec["seed"], bf16=cuda, use_cpu=not cuda, report_to="none",
        save_strategy="no", disable_tqdm=True, logging_steps=max(1, min(20, s["steps"] // 5)),
    )
    timer = step_timer()
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, data_collator=recorder,
                      callbacks=[timer])
    prep_s = time.perf_counter() - started
    train_result = trainer.train()
    labelled = sum(sum(1 for x in labels if x != IGNORE) for labels in train["labels"])
    return _result(spec, trainer, timer, recorder, train_result, model, device, prep_s,
                   {"strategy": "qlora" if quantized else "lora", "side": "plain", "labelled_tokens": labelled})


def sft_arm(spec: dict[str, Any], run_dir: Path, arm: str) -> dict[str, Any]:
    """Arms: lora, qlora (ours); lora_plain, qlora_plain (transformers + peft + bitsandbytes)."""
    if arm.endswith("_plain"):
        return plain(spec, run_dir, quantized=arm.startswith("qlora"))
    return ours(spec, run_dir, arm)
