"""The model card (`README.md`) of a run: Hub metadata in YAML front matter, then what the model is,
where it came from, how well it does, what training it cost, how to load it, and the config.

Everything comes from the run folder (metrics.json, config.yaml, and the folders of the runs it
started from), so a card written months later says the same as one written at the end of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from ptft_hf.objectives.registry import Objective, get_objective
from ptft_hf.strategies.registry import strategy_class
from ptft_hf.hub.lineage import (ADAPTER, FULL, HUB, MERGED, SCRATCH, RunRecord, adapter_base_on_hub, describe_origin, hub_base_model,
                                 trace_lineage)

PLACEHOLDER_REPO = "<user>/<name>"
_NOT_QUALITY = ("_runtime", "_per_second", "_tokens", "_preparation_time", "_before")


def _objective(record: RunRecord) -> Objective:
    """The run's objective, from the registry (the objective named by its config or metrics)."""
    return get_objective((record.config.get("objective") or {}).get("name") or record.metrics.get("objective") or "clm")


def _strategy(record: RunRecord) -> Any:
    """The run's strategy class, from the registry."""
    return strategy_class((record.config.get("strategy") or {}).get("name") or record.metrics.get("strategy") or "full")


def _hub_datasets(chain: list[RunRecord]) -> list[str]:
    """Hub data set ids the chain trained on (local files and builtin corpora have none)."""
    ids: list[str] = []
    for record in chain:
        data = record.config.get("data") or {}
        if data.get("hub_id") and not data.get("path") and data["hub_id"] not in ids:
            ids.append(data["hub_id"])
    return ids


def _metric_ids(record: RunRecord) -> list[str]:
    """`evaluate` ids of the figures the eval table reports."""
    ids = ["perplexity"] if "eval_perplexity" in record.metrics else []
    ids += [name for name in ("accuracy", "f1", "exact_match") if f"eval_{name}" in record.metrics]
    return ids


def card_metadata(chain: list[RunRecord], kind: str) -> dict[str, Any]:
    """The YAML front matter, as the Hub reads it (keys without a value are left out)."""
    record = chain[-1]
    objective, strategy = _objective(record), _strategy(record)
    direct = adapter_base_on_hub(chain)  # the exact weights this run started from, by Hub id
    base, relation = hub_base_model(chain), None  # further up the chain: let the Hub infer the relation
    if direct:
        base, relation = direct[0], {ADAPTER: "adapter", FULL: "finetune", MERGED: "merge"}[kind]
    tags = ["ptft_hf", strategy.name, objective.name]
    if kind == MERGED:
        tags.append("merged")
    if kind == ADAPTER and strategy.saves_adapter_only and "lora" not in tags:
        tags.append("lora")
    data = ModelCardData(
        base_model=base,
        base_model_relation=relation,
        library_name="peft" if kind == ADAPTER else "transformers",
        pipeline_tag=objective.pipeline_tag,
        tags=tags,
        datasets=_hub_datasets(chain) or None,
        metrics=_metric_ids(record) or None,
    )
    return data.to_dict()


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _data_words(record: RunRecord, counts: bool = True) -> str:
    data = record.config.get("data") or {}
    name = data.get("name") or record.metrics.get("data") or "data"
    if data.get("path"):
        source = f"local files `{Path(str(data['path'])).name}`"
    elif data.get("hub_id"):
        source = f"[`{data['hub_id']}`](https://huggingface.co/datasets/{data['hub_id']})"
    elif data.get("builtin"):
        source = f"builtin corpus `{data['builtin']}`"
    else:
        source = "?"
    train = (record.metrics.get("data_train") or {}) if counts else {}
    amount = f", {_fmt(train.get('documents'))} training documents, {_fmt(train.get('tokens'))} tokens" if train else ""
    return f"`{name}` ({source}{amount})"


def _quality(record: RunRecord) -> str:
    m = record.metrics
    for key in ("eval_perplexity", "eval_accuracy", "eval_f1", "eval_exact_match"):
        if key in m:
            return f"eval {key[len('eval_'):]} {_fmt(m.get(key + '_before'))} → {_fmt(m[key])}"
    return "no eval figures recorded"


def _stage_kind(record: RunRecord) -> str:
    """pretraining (from scratch), continued pretraining (full LM training of a checkpoint), fine-tuning."""
    language_modelling = _objective(record).language_modelling
    if record.origin == SCRATCH or record.random_init:
        return "pretraining" if language_modelling else "training from scratch"
    if language_modelling and not _strategy(record).saves_adapter_only:
        return "continued pretraining"
    return "fine-tuning"


def _lineage_lines(chain: list[RunRecord]) -> list[str]:
    lines = ["## Lineage", "", "Oldest first; each stage starts from the one above it.", ""]
    for i, record in enumerate(chain):
        previous = chain[i - 1] if i else None
        this = " (this model)" if i == len(chain) - 1 else ""
        stage = _stage_kind(record)
        if not record.metrics:
            lines.append(f"{i + 1}. **{record.name}**: {describe_origin(record, previous)}")
            continue
        m = record.metrics
        cost = f"{_fmt(m.get('train_steps'))} steps, {_fmt(m.get('train_tokens'))} tokens, " \
               f"{_fmt(m.get('train_wall_time_s'))} s, ~{float(m.get('train_flops_estimate') or 0):.3g} FLOPs"
        sha = f"; config sha256 `{record.config_sha256[:16]}…`" if record.config_sha256 else ""
        lines.append(f"{i + 1}. **{record.name}**{this}: {stage}, objective `{_objective(record).name}`, strategy "
                     f"`{_strategy(record).name}`, on {_data_words(record)}; starts from {describe_origin(record, previous)}; "
                     f"{_quality(record)}; {cost}{sha}")
    if len(chain) > 1 and all(r.metrics for r in chain):
        flops = sum(float(r.metrics.get("train_flops_estimate") or 0) for r in chain)
        wall = sum(float(r.metrics.get("train_wall_time_s") or 0) for r in chain)
        lines += ["", f"Whole lineage: {wall:.0f} s of training, ~{flops:.3g} FLOPs."]
    return lines + [""]


def _eval_lines(record: RunRecord) -> list[str]:
    m = record.metrics
    rows = [(k, m.get(f"{k}_before"), v) for k, v in m.items()
            if k.startswith("eval_") and isinstance(v, (int, float)) and not k.endswith(_NOT_QUALITY)]
    own = ("eval_loss", "eval_perplexity", "eval_accuracy", "eval_f1", "eval_exact_match")
    references = sorted(m["references"]) if "references" in m else \
        sorted({k[len("eval_"):].rsplit("_", 1)[0] for k, _, _ in rows if k not in own})  # written before `references`
    note = (f"; rows named {', '.join(f'`{r}_…`' for r in references)}: that data set's eval split, measured to show "
            "what specialising cost") if references else ""
    lines = ["## Evaluation", "", f"On the eval split of {_data_words(record, counts=False)}{note}.", "",
             "| metric | before training | after training |", "|---|---|---|"]
    token = _objective(record).predicts
    lines += [f"| {k[len('eval_'):]}{token if k == 'eval_accuracy' else ''} | {_fmt(before)} | {_fmt(after)} |"
              for k, before, after in sorted(rows)]
    if "unigram_perplexity" in m:
        lines.append(f"| unigram perplexity floor | {_fmt(m['unigram_perplexity'])} | |")
    return lines + [""]


def _cost_lines(record: RunRecord) -> list[str]:
    m = record.metrics
    figures = [
        ("training steps", m.get("train_steps")), ("training tokens", m.get("train_tokens")),
        ("training wall time (s)", m.get("train_wall_time_s")), ("tokens per second", m.get("train_tokens_per_second")),
        ("estimated training FLOPs", f"{m['train_flops_estimate']:.3g}" if m.get("train_flops_estimate") else None),
        ("peak memory (MB)", m.get("peak_memory_mb")), ("parameters", m.get("parameters")),
        ("parameters trained", f"{_fmt(m.get('trainable_parameters'))} ({m.get('trainable_percent', 0):.2f}%)"
         if "trainable_parameters" in m else None),
        ("saved weights (bytes)", m.get("saved_bytes")), ("whole run wall time (s)", m.get("wall_time_s")),
    ]
    lines = ["## Training cost", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in figures if value is not None]
    return lines + [""]


def _usage_lines(chain: list[RunRecord], kind: str, repo_id: str) -> list[str]:
    record = chain[-1]
    objective, strategy = _objective(record), _strategy(record)
    auto = objective.auto_class
    labels = f", num_labels={record.metrics['num_labels']}" if objective.classifies and "num_labels" in record.metrics else ""
    code = [f"from transformers import {auto}, AutoTokenizer"]
    notes: list[str] = []
    if kind == ADAPTER:
        on_hub = adapter_base_on_hub(chain)
        direct = on_hub is not None
        base = on_hub[0] if on_hub else "path/to/base-model"
        if on_hub and on_hub[1]:
            labels = f", revision=\"{on_hub[1]}\"{labels}"
        code += ["from peft import PeftModel", ""]
        quant = (record.config.get("strategy") or {}).get("quantization") if strategy.quantizes else None
        if quant:
            code.insert(0, "from transformers import BitsAndBytesConfig")
            fields = ", ".join(f"{k}={v!r}" for k, v in quant.items() if v is not None)
            code.append(f"base = {auto}.from_pretrained(\"{base}\", quantization_config=BitsAndBytesConfig({fields}){labels})")
        else:
            code.append(f"base = {auto}.from_pretrained(\"{base}\"{labels})")
        code.append(f"model = PeftModel.from_pretrained(base, \"{repo_id}\")")
        if not direct:
            where = f"the model of stage `{chain[-2].name}`" if len(chain) > 1 else "the local model it was trained on"
            notes.append(f"This adapter applies to {where}, which is not on the Hub: publish that model too "
                         f"(`ptft-hf-push <its run folder> --repo-id user/base`) and load it as the base, or publish "
                         f"this run merged into its base (`hub.merged=true`, `ptft-hf-push --merged`).")
    else:
        code += ["", f"model = {auto}.from_pretrained(\"{repo_id}\")"]
    code.append(f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")")
    if objective.generates:
        prompts = (record.config.get("samples") or {}).get("prompts") or ["The"]
        code += ["", f"inputs = tokenizer({prompts[0]!r}, return_tensors=\"pt\")",
                 "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))"]
    return ["## Use it", "", *notes, *([""] if notes else []), "```python", *code, "```", ""]


def _config_lines(run_dir: Path | None) -> list[str]:
    config_path = run_dir / "config.yaml" if run_dir else None
    if not config_path or not config_path.is_file():
        return []
    text = config_path.read_text(encoding="utf-8").rstrip()
    return ["## Config", "", "The composed config of the run (`config.yaml`): `ptft-hf` reruns it.", "",
            "<details><summary>config.yaml</summary>", "", "```yaml", text, "```", "", "</details>", ""]


def _summary(chain: list[RunRecord], kind: str) -> str:
    record = chain[-1]
    objective, strategy = _objective(record), _strategy(record)
    model = f"{objective.description} ({objective.pipeline_tag})"
    r = ((record.config.get("strategy") or {}).get("lora") or {}).get("r")
    method = strategy.display_name + (f" (rank {r})" if r else "")
    data = _data_words(record)
    what = {ADAPTER: f"A {method} adapter for a {model}, trained with ptft_hf on {data}.",
            FULL: f"A {model}, {'trained' if strategy.saves_adapter_only else 'trained in full'} with ptft_hf on {data}.",
            MERGED: f"A {model}: a {method} adapter trained with ptft_hf on {data}, merged into its base model."}[kind]
    return what + (f" It is stage {len(chain)} of a {len(chain)}-stage lineage." if len(chain) > 1 else "")


def render_card(run_dir: str | Path, kind: str, repo_id: str | None = None,
                metrics: dict[str, Any] | None = None) -> str:
    """The README.md text for the model of `run_dir` published as `kind` (adapter, full, merged).

    `metrics`: the run's metrics when metrics.json is not written yet (the end of a run).
    """
    chain = trace_lineage(run_dir, metrics)
    record = chain[-1]
    repo = repo_id or PLACEHOLDER_REPO
    meta = ModelCardData(**card_metadata(chain, kind)).to_yaml()
    title = repo_id.split("/")[-1] if repo_id else record.name
    lines = ["---", meta, "---", "", f"# {title}", "", _summary(chain, kind), ""]
    base = hub_base_model(chain)
    if base and record.origin != HUB:
        lines += [f"`base_model` names `{base}`, the Hub checkpoint where the lineage below starts.", ""]
    elif not base:
        lines += ["No `base_model`: these weights do not derive from a Hub checkpoint (see the lineage).", ""]
    lines += _lineage_lines(chain) + _eval_lines(record) + _cost_lines(record)
    lines += _usage_lines(chain, kind, repo) + _config_lines(record.run_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_card(path: str | Path, run_dir: str | Path, kind: str, repo_id: str | None = None,
               metrics: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.write_text(render_card(run_dir, kind, repo_id, metrics), encoding="utf-8")
    return path
