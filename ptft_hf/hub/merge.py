"""Merge a LoRA/DoRA/QLoRA adapter into its base and prove the merged model computes the same.

For QLoRA the base is loaded in 4-bit exactly as it was trained and dequantised before merging,
so the merged full-precision weights are the 4-bit values plus the adapter's delta; merging into
the 4-bit layers themselves would re-quantise the delta away.

The merged folder keeps what the adapter folder knew: its tokenizer (chat template, special
tokens) and its `generation_config.json` (SFT's end-of-turn eos ids), so that the merged model
stops where the adapter model stops. The check reloads the saved folder and compares logits, and
for causal LMs also greedy answers (through the chat template when there is one), stop included.
"""

from __future__ import annotations

import gc
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from peft import PeftConfig, PeftModel
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig
from transformers.pytorch_utils import Conv1D

from ptft_hf.errors import UserError

log = logging.getLogger(__name__)

CHECK_TEXTS = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy",
    "Return the number of items in the container.",
    "The quick brown fox jumps over the lazy dog.",
)


CHECK_QUESTIONS = ("What colour is a lime?", "What is 2 plus 3?")


@dataclass
class MergeResult:
    output_dir: Path
    max_abs_diff: float
    atol: float
    quantized_base: bool
    answers: list[str] = field(default_factory=list)  # the merged model's greedy answers to the check prompts
    eos_token_id: int | list[int] | None = None  # the merged generation_config's stop ids


def adapter_folder(path: Path) -> Path:
    """The adapter folder of a run folder (`<run>/model`) or the folder itself."""
    for candidate in (path / "model", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    if (path / "model" / "config.json").is_file() or (path / "config.json").is_file():
        raise UserError.of("run_dir", f"'{path}' holds a full model, not an adapter", "nothing to merge: use its model/ folder as it is")
    raise UserError.of("run_dir", f"no adapter_config.json under '{path}'", "give a run folder of strategy=lora, dora or qlora")


def _run_quantization(adapter_dir: Path) -> dict[str, Any] | None:
    """The BitsAndBytesConfig fields the run trained with (from the run's config.yaml), if any."""
    config_path = adapter_dir.parent / "config.yaml"
    if not config_path.is_file():
        return None
    strategy = (yaml.safe_load(config_path.read_text()) or {}).get("strategy", {})
    from ptft_hf.strategies import find_strategy

    quantizes = getattr(find_strategy(str(strategy.get("name"))), "quantizes", False)
    if not quantizes or not strategy.get("quantization"):
        return None
    from ptft_hf.strategies.qlora import unresolved_auto_as_float32

    return unresolved_auto_as_float32(dict(strategy["quantization"]))  # the merge dequantises: compute dtype is moot


def _model_class(adapter_dir: Path) -> Any:
    """The auto class of the run's objective (`auto_class` in the objective registry), from the run's
    config.yaml; causal LM for an adapter folder outside a run. An objective whose adapters cannot
    be merged is refused in one line."""
    config_path = adapter_dir.parent / "config.yaml"
    name = ((yaml.safe_load(config_path.read_text()) or {}).get("objective") or {}).get("name") if config_path.is_file() else None
    if name is None:
        return AutoModelForCausalLM
    from ptft_hf.objectives import get_objective

    objective = get_objective(str(name))
    if not objective.merges:
        raise UserError.of("run_dir", f"adapters of objective={name} cannot be merged here", "publish the adapter as it is")
    return getattr(transformers, objective.auto_class)


def _head_config(adapter_dir: Path, auto_class: Any) -> dict[str, Any]:
    """A classifier adapter's label count and names (`label_maps.json` beside it), as
    `from_pretrained` keyword arguments."""
    from ptft_hf.training.saving import LABEL_MAPS, read_label_maps

    head = read_label_maps(adapter_dir)
    if not head and auto_class is transformers.AutoModelForSequenceClassification:
        raise UserError.of("run_dir", f"the classifier adapter in '{adapter_dir}' has no {LABEL_MAPS}, so its label count and "
                           "names are unknown (saved by an older ptft_hf)", "train it again with this version to merge it")
    return head


def _safe_causal_lm(name: str, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> torch.nn.Module:
    """`auto_class.from_pretrained` from safetensors only: a base with only pickle weights
    (pytorch_model.bin, which can run code when loaded) is refused in one line."""
    from ptft_hf.models.loading import pickle_refused

    try:
        return auto_class.from_pretrained(name, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as err:
        refused = pickle_refused(name, err)
        if refused is None:
            raise
        raise UserError.of("base model", refused.problems[0].what, "convert the base's weights to safetensors") from err


def merge_dtype(base: str) -> torch.dtype:
    """The dtype the merge loads, merges and saves in: the base checkpoint's stored dtype (bf16 for
    the Hub presets: half the memory of float32, and the dtype a user publishes), float32 when the
    checkpoint does not say. torch's CPU kernels run bf16 and fp16, so every device supports it."""
    from ptft_hf.training.dtypes import stored_dtype

    return getattr(torch, stored_dtype(base) or "float32")


def _load_base(base: str, quantization: dict[str, Any] | None, auto_class: Any = AutoModelForCausalLM,
               dtype: torch.dtype = torch.float32, **head: Any) -> torch.nn.Module:
    if quantization:
        from ptft_hf.strategies.qlora import keep_cpu_weights_trainable

        # the same 4-bit code path the adapter was trained with
        return keep_cpu_weights_trainable(_safe_causal_lm(base, auto_class, quantization_config=BitsAndBytesConfig(**quantization),
                                                          device_map={"": "cpu"}, dtype=dtype, **head))
    return _safe_causal_lm(base, auto_class, dtype=dtype, **head)


@torch.no_grad()
def _into_original_architecture(merged: torch.nn.Module, base: str, auto_class: Any = AutoModelForCausalLM,
                                dtype: torch.dtype = torch.float32, **head: Any) -> torch.nn.Module:
    """The dequantised, merged weights in a model of the base's own classes and config, built on the
    meta device and given the merged tensors themselves (no second copy of the model).

    Quantisation swaps layers for `Linear4bit` and dequantisation gives back `nn.Linear`, which
    for GPT-2's `Conv1D` layers holds the weight transposed; saved as is, it would not load. The
    dequantised model's config also still describes the 4-bit quantisation.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, **head)
    with torch.device("meta"):
        target = auto_class.from_config(config, dtype=dtype)
    source = merged.state_dict()
    conv1d_weights = {f"{name}.weight" for name, module in target.named_modules() if isinstance(module, Conv1D)}
    state = {name: (source[name].t().contiguous() if name in conv1d_weights else source[name]).to(dtype)
             for name in target.state_dict()}  # Conv1D stores (in, out)
    del source
    target.load_state_dict(state, assign=True, strict=True)
    target.tie_weights()
    return target


def check_prompts(tokenizer: Any) -> list[str]:
    """The greedy check's prompts: questions through the chat template (with the generation
    prompt) when the tokenizer has one, else the check texts as they are."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                for q in CHECK_QUESTIONS]
    return list(CHECK_TEXTS[:2])


@torch.no_grad()
def greedy_ids(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
               margins: list[list[float]] | None = None) -> list[list[int]]:
    """Each prompt's greedy continuation (token ids, through the stop token when one is reached),
    one prompt at a time (no padding), under the model's own generation_config. `margins`, when
    given, receives per prompt the gap between the top two logits at every generated step."""
    model.eval()
    out = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   output_scores=margins is not None, return_dict_in_generate=True)
        out.append(generated.sequences[0, inputs["input_ids"].shape[1]:].tolist())
        if margins is not None:
            margins.append([float(top[0] - top[1]) for top in (score[0].float().topk(2).values for score in generated.scores)])
    return out


def near_tie(want: list[int], have: list[int], margins: list[float], atol: float) -> bool:
    """The answers part where the adapter model's top two candidates were within `atol` of each other:
    a difference the merged weights' rounding (bf16) may make, not a wrong merge."""
    step = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
    return step < len(margins) and margins[step] <= atol


def _positions(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token logits at the real (unpadded) positions; a classifier's per-text logits as they are."""
    return logits[mask] if logits.dim() == 3 else logits


@torch.no_grad()
def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**inputs).logits.float()


def _merged(adapted: PeftModel, adapter_dir: Path, quantization: dict[str, Any] | None, base: str, auto_class: Any,
            dtype: torch.dtype, **head: Any) -> torch.nn.Module:
    """The adapter merged into the base it is loaded on, in place. A 4-bit base first sheds the
    adapter (peft's `unload`), is dequantised a layer at a time into `dtype` (transformers'
    `dequantize`: each `Linear4bit` replaced by an `nn.Linear` as it goes), takes the adapter again
    and merges in full precision: merging into the 4-bit layers would re-quantise the delta away."""
    if not quantization:
        return adapted.merge_and_unload()
    base_model = adapted.unload()
    base_model = base_model.dequantize(dtype=dtype)
    merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    return _into_original_architecture(merged, base, auto_class, dtype, **head)


# the check's default tolerance per dtype of the merge: in bf16 each merged weight is rounded to 8 bits of
# mantissa where the adapter model adds its fp32 delta at run time, and 24 layers carry that to the
# logits (benchmarks W9, Qwen2.5-0.5B's shape, random weights: 0.086); the greedy answers must match too
DEFAULT_ATOL = {torch.float32: 1e-3, torch.bfloat16: 0.15, torch.float16: 2e-2}


def merge_adapter(
    path: str | Path, output_dir: str | Path | None = None, atol: float | None = None,
    texts: Sequence[str] = CHECK_TEXTS, overwrite: bool = False, max_new_tokens: int = 16,
) -> MergeResult:
    """Merge the adapter under `path` into its base; save to `output_dir` (default `<run>/merged`)
    with the adapter folder's tokenizer and generation_config. Causal LMs, masked LMs and classifiers
    (heads, trained in full beside the adapter, and label maps kept) are merged alike.

    Raises UserError when the merged logits differ from the adapter model's by more than `atol`
    (None: `DEFAULT_ATOL` of the merge's dtype, the base's stored one), or when its greedy answers
    (up to `max_new_tokens`) differ from the adapter model's.
    """
    adapter_dir = adapter_folder(Path(path))
    output_dir = Path(output_dir) if output_dir else adapter_dir.parent / "merged"
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise UserError.of("--output", f"'{output_dir}' is not empty", "choose another folder or add --overwrite")
    base = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    quantization = _run_quantization(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.pad_token is None:  # Llama 3 ships none; the check texts are padded to one batch
        tokenizer.pad_token = tokenizer.eos_token
    auto_class = _model_class(adapter_dir)
    head = _head_config(adapter_dir, auto_class)
    generates = auto_class is AutoModelForCausalLM
    # causal LMs continue raw text; encoders read texts as they were trained, with [CLS] ... [SEP]
    inputs = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=not generates)
    mask = inputs["attention_mask"].bool()

    generation_config = (GenerationConfig.from_pretrained(str(adapter_dir))
                         if (adapter_dir / "generation_config.json").is_file() else None)
    # one copy of the base, in its stored dtype: the adapter model's answers first, then merged in place
    dtype = merge_dtype(base)
    atol = DEFAULT_ATOL.get(dtype, 1e-3) if atol is None else atol
    adapted = PeftModel.from_pretrained(_load_base(base, quantization, auto_class, dtype, **head), str(adapter_dir))
    if generation_config is not None:  # SFT's stop tokens (end of turn), as the run's own API loads it
        adapted.get_base_model().generation_config = generation_config
    expected = _positions(_logits(adapted, inputs), mask)
    prompts = check_prompts(tokenizer) if generates else []
    margins: list[list[float]] = []
    expected_answers = greedy_ids(adapted, tokenizer, prompts, max_new_tokens, margins)
    merged = _merged(adapted, adapter_dir, quantization, base, auto_class, dtype, **head)
    del adapted

    # Save next to the destination, free the merged model, reload what was saved, and compare: the
    # saved files are checked, and the two never share memory
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    if generation_config is not None:
        merged.generation_config = generation_config
    merged.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    del merged
    gc.collect()
    reloaded = _safe_causal_lm(str(staging), auto_class, dtype=dtype)
    got = _positions(_logits(reloaded, inputs), mask)
    max_diff = float((expected - got).abs().max())
    log.info("merged vs adapter model: largest logit difference %.3g (tolerance %.3g)", max_diff, atol)
    if not max_diff <= atol:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError.of("--atol", f"merged logits differ from the adapter model's by {max_diff:.3g}",
                           "nothing was saved; inspect the adapter, or raise --atol if the difference is expected")
    got_answers = greedy_ids(reloaded, tokenizer, prompts, max_new_tokens)
    answers = [tokenizer.decode(ids) for ids in got_answers]
    for prompt, want, have, margin in zip(prompts, expected_answers, got_answers, margins):
        if want != have and dtype != torch.float32 and near_tie(want, have, margin, atol):
            log.warning("merged vs adapter model: the answer to %r parts where the adapter model's top two tokens were "
                        "within the %s tolerance (%.3g): %r against %r", prompt, str(dtype).removeprefix("torch."), atol,
                        tokenizer.decode(have), tokenizer.decode(want))
        elif want != have:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError.of("merge check", f"the merged model answers {tokenizer.decode(have)!r} where the adapter model "
                               f"answers {tokenizer.decode(want)!r}", "nothing was saved; inspect the adapter and its "
                               "generation_config.json")
    if generates:
        log.info("merged vs adapter model: the same greedy answers %s (stop ids %s)", answers,
                 reloaded.generation_config.eos_token_id)
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    stops = reloaded.generation_config.eos_token_id if generates else None
    return MergeResult(output_dir=output_dir, max_abs_diff=max_diff, atol=atol, quantized_base=bool(quantization),
                       answers=answers, eos_token_id=stops)
