"""Stage what goes up to the Hub in one folder, and prove that folder computes what the run trained.

The staged folder is exactly what is uploaded: the adapter (or the full or merged weights) in
safetensors, the tokenizer, and the model card. No pickles travel (`training_args.bin`, `*.bin`).
The reload check loads the staged folder the way someone downloading it would (plain
`from_pretrained`, `PeftModel.from_pretrained` on the base the adapter names) and compares its
logits on a few texts with the trained model: the model in memory at the end of a run, or the
run's `model/` loaded through the run's own loading code when pushing a finished run later.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from ptft_hf.config.schema import HubConfig, PtftConfig, TokenizerConfig
from ptft_hf.hub.checks import UNSAVED_BASE_FIX, base_is_unsaved
from ptft_hf.errors import UserError
from ptft_hf.hub.card import ADAPTER, FULL, MERGED, write_card
from ptft_hf.hub.merge import CHECK_TEXTS
from ptft_hf.run_dir import FINISHED_MARKER

log = logging.getLogger(__name__)

# What may travel: weights in safetensors, JSON configs, tokenizer files, chat templates.
STAGED_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken")
CARD = "README.md"  # written fresh for the repo; never copied
_KIND_WORDS = {ADAPTER: "adapter", FULL: "full model", MERGED: "merged model"}


@dataclass
class Staged:
    """A staged folder and what it holds."""

    folder: Path
    kind: str  # adapter, full or merged
    run_dir: Path
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # present in the source, not uploaded
    # an adapter's base as the run loaded it, when the staged adapter_config.json names it by Hub id
    local_base: str | None = None


def model_kind(model_dir: Path) -> str:
    """adapter (peft) or full (transformers weights), from the files of a saved model folder."""
    if (model_dir / "adapter_config.json").is_file():
        return ADAPTER
    if (model_dir / "config.json").is_file():
        return FULL
    raise UserError.of("run_dir", f"no adapter_config.json or config.json in '{model_dir}'",
                       "give a finished run folder (one with model/ and metrics.json)")


def load_run_config(run_dir: Path) -> PtftConfig:
    """The run's config.yaml as the typed schema (trainer left out: it may name fields of another
    transformers version, and nothing here needs it)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError.of("run_dir", f"no config.yaml in '{run_dir}'", "give a run folder written by ptft-hf")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    raw.pop("trainer", None)
    raw.pop("stages", None)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PtftConfig), raw))
    except Exception as err:  # omegaconf validation: a key this version does not know
        first = str(err).strip().splitlines()[0]
        raise UserError.of("run_dir", f"'{path}' does not fit this version's config schema ({first})",
                           "push with the ptft_hf version that trained the run") from err


def _staging_folder(run_dir: Path, hub: HubConfig) -> Path:
    """`hub.dir` or `<run>/hub`; refuses folders whose wiping would lose anything else."""
    folder = Path(hub.dir).expanduser().resolve() if hub.dir else run_dir / "hub"
    protected = [run_dir, run_dir / "model", run_dir / "merged", *run_dir.parents]
    if folder in protected or run_dir.is_relative_to(folder):
        raise UserError.of("hub.dir", f"'{folder}' would wipe the run folder or its model", "choose an empty folder of its own")
    if folder.is_dir() and any(folder.iterdir()):
        card = folder / CARD
        if not (card.is_file() and "ptft_hf" in card.read_text(encoding="utf-8", errors="replace")):
            raise UserError.of("hub.dir", f"'{folder}' is not empty and was not staged by ptft_hf",
                               "choose an empty folder (it is wiped before each staging)")
    return folder


def _source_folder(run_dir: Path, merged: bool) -> tuple[Path, str]:
    model_dir = run_dir / "model"
    kind = model_kind(model_dir)
    conf = load_run_config(run_dir)
    if kind == ADAPTER and base_is_unsaved(conf.model):  # validation refuses this before training (adapter_base_problems)
        raise UserError.of("run_dir", f"the adapter in '{model_dir}' sits on a base with random weights that was never saved",
                           UNSAVED_BASE_FIX)
    if not merged:
        return model_dir, kind
    if kind != ADAPTER:
        raise UserError.of("hub.merged", f"'{model_dir}' holds a full model, there is no adapter to merge", "drop hub.merged")
    merged_dir = run_dir / "merged"
    if not (merged_dir / "config.json").is_file():
        from ptft_hf.hub.merge import merge_adapter

        log.info("merging the adapter into its base for the Hub (checked against the adapter model)")
        merge_adapter(run_dir, merged_dir)
    return merged_dir, MERGED


def stage_run(run_dir: str | Path, hub: HubConfig) -> Staged:
    """Copy what goes up into the staging folder and write the model card there."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / FINISHED_MARKER).is_file():
        raise UserError.of("run_dir", f"'{run_dir}' holds no finished run (no {FINISHED_MARKER})",
                           "give the folder of a run that finished training")
    folder = _staging_folder(run_dir, hub)
    source, kind = _source_folder(run_dir, hub.merged)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    staged = Staged(folder=folder, kind=kind, run_dir=run_dir)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != CARD and any(fnmatch.fnmatch(path.name, p) for p in STAGED_PATTERNS):
            shutil.copy2(path, folder / path.name)
            staged.files.append(path.name)
        elif path.name != CARD:
            staged.skipped.append(path.name)
    if not any(name.endswith(".safetensors") for name in staged.files):
        raise UserError.of("run_dir", f"'{source}' holds no safetensors weights", "save the model with safetensors (the default)")
    if kind == ADAPTER:
        staged.local_base = _name_base_by_hub_id(folder / "adapter_config.json", run_dir)
    if staged.skipped:
        log.info("not staged (not safetensors, config or tokenizer files): %s", ", ".join(staged.skipped))
    write_card(folder / CARD, run_dir, kind, hub.repo_id)
    staged.files = sorted([*staged.files, CARD])
    log.info("staged the %s of run %s in %s: %s", _KIND_WORDS[kind], run_dir.name, folder, ", ".join(staged.files))
    return staged


def _name_base_by_hub_id(adapter_config: Path, run_dir: Path) -> str | None:
    """Point the staged adapter at its base's Hub id, where the lineage knows one (peft wrote the
    folder the run loaded, which no one else can resolve); returns the replaced local name."""
    from ptft_hf.hub.lineage import adapter_base_on_hub, trace_lineage

    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    local = config.get("base_model_name_or_path")
    on_hub = adapter_base_on_hub(trace_lineage(run_dir))
    if on_hub is None:
        if not local or not Path(local).is_absolute() and not Path(local).expanduser().exists():
            return None  # a Hub id already
        if not Path(local).expanduser().exists():
            log.warning("the adapter's base is the local folder '%s', which is not on this machine any more and no "
                        "one else can load: publish the base model and stage this run again", local)
            return None
        log.warning("the adapter's base is the local folder '%s', which no one else can load: publish that model "
                    "(ptft-hf-push <its run folder> --repo-id user/base) and stage this run again, or publish it merged "
                    "(hub.merged=true)", local)
        return None
    repo_id, revision = on_hub
    if repo_id == local and revision == config.get("revision"):
        return None
    config.update(base_model_name_or_path=repo_id, revision=revision)
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("adapter_config.json names its base by Hub id: %s%s (trained from %s)", repo_id,
             f" at revision {revision}" if revision else "", local)
    return local


def _auto_class(objective: str) -> Any:
    import transformers

    from ptft_hf.objectives import get_objective

    return getattr(transformers, get_objective(objective).auto_class)


def _base_kwargs(conf: PtftConfig, num_labels: int | None) -> dict[str, Any]:
    """Keyword arguments the adapter's base needs: the run's quantisation, the label count."""
    from ptft_hf.objectives import get_objective
    from ptft_hf.objectives.classification import HEAD_MODULES
    from ptft_hf.strategies import get_strategy

    classification = get_objective(conf.objective.name).classifies
    kwargs = get_strategy(conf.strategy).model_kwargs(HEAD_MODULES if classification else ())
    if classification and num_labels:
        kwargs["num_labels"] = num_labels
    return kwargs


def _dtype(conf: PtftConfig) -> Any:
    from ptft_hf.models.loading import torch_dtype

    return torch_dtype(conf.model.dtype)


def _same_4bit_path(model: torch.nn.Module, conf: PtftConfig) -> torch.nn.Module:
    from ptft_hf.strategies import strategy_class

    if strategy_class(conf.strategy.name).quantizes:
        from ptft_hf.strategies.qlora import keep_cpu_weights_trainable

        return keep_cpu_weights_trainable(model)  # the 4-bit code path the adapter was trained with
    return model


def load_trained(run_dir: Path, conf: PtftConfig, num_labels: int | None = None) -> torch.nn.Module:
    """The run's trained model from its `model/`, through the run's own loading code."""
    from peft import PeftModel

    from ptft_hf.models.loading import load_model, load_tokenizer

    model_dir = run_dir / "model"
    saved = replace(conf.model, name_or_path=str(model_dir), tokenizer=TokenizerConfig(), revision=None, config={},
                    random_init=False)
    tokenizer = load_tokenizer(saved)
    auto = _auto_class(conf.objective.name)
    if model_kind(model_dir) == FULL:
        return load_model(saved, tokenizer, auto)
    base = _same_4bit_path(load_model(conf.model, tokenizer, auto, **_base_kwargs(conf, num_labels)), conf)
    return PeftModel.from_pretrained(base, str(model_dir))


def load_staged(staged: Staged, conf: PtftConfig, device: torch.device,
                num_labels: int | None = None) -> tuple[torch.nn.Module, list[str]]:
    """The staged folder loaded as a Hub user would (plain `from_pretrained` calls), and the
    weights that loading initialised at random because no staged file holds them."""
    from peft import PeftConfig, PeftModel
    from safetensors import safe_open

    auto = _auto_class(conf.objective.name)
    if staged.kind != ADAPTER:
        model, info = auto.from_pretrained(str(staged.folder), dtype=_dtype(conf), output_loading_info=True,
                                           use_safetensors=True)  # staged from safetensors; never a pickle
        return model.to(device), sorted(info["missing_keys"])
    base_name = PeftConfig.from_pretrained(str(staged.folder)).base_model_name_or_path
    kwargs = _base_kwargs(conf, num_labels)
    if "device_map" in kwargs:
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    if staged.local_base:  # the same weights, by lineage: checked from the copy the run loaded, not downloaded
        base_name = staged.local_base
    revision = conf.model.revision if base_name == conf.model.name_or_path else None
    base, info = auto.from_pretrained(base_name, revision=revision, dtype=_dtype(conf), output_loading_info=True,
                                      use_safetensors=not conf.model.allow_pickle, **kwargs)
    model = PeftModel.from_pretrained(_same_4bit_path(base, conf), str(staged.folder))
    with safe_open(str(staged.folder / "adapter_model.safetensors"), "pt") as weights:
        saved = list(weights.keys())
    # a weight the adapter saves whole (modules_to_save, e.g. a classifier head) replaces the random one
    random = sorted(k for k in info["missing_keys"] if not any(s == k or s.endswith(f".{k}") for s in saved))
    return (model if "device_map" in kwargs else model.to(device)), random


@torch.no_grad()
def _logits(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], device: torch.device) -> list[torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        return [model(**tokenizer(text, return_tensors="pt", truncation=True, max_length=64).to(device)).logits.float().cpu()
                for text in texts]
    finally:
        model.train(was_training)


def _plain_forward(model: torch.nn.Module) -> torch.nn.Module:
    """The trained model with its own forward back: under mixed precision (trainer.bf16) accelerate
    wrapped it in autocast, and the staged folder loads in fp32, as a user loads it."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=False)


def reload_check(staged: Staged, trained: torch.nn.Module | None = None, atol: float = 1e-4,
                 texts: Sequence[str] = CHECK_TEXTS) -> float:
    """Largest logit difference between the staged folder and the trained model; raises UserError
    (nothing uploaded) when it exceeds `atol` or the folder does not load."""
    from transformers import AutoTokenizer

    conf = load_run_config(staged.run_dir)
    num_labels = None
    from ptft_hf.objectives import get_objective

    if get_objective(conf.objective.name).classifies:
        from ptft_hf.hub.lineage import read_run

        num_labels = read_run(staged.run_dir)[0].get("num_labels")
    fix = ("nothing was uploaded; a staged weight differs from the trained one or is missing (fix the run or stage "
           "again), or raise hub.atol if the difference is expected")
    what = f"the staged {_KIND_WORDS[staged.kind]} in '{staged.folder}'"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(staged.folder))
        reference = _plain_forward(trained) if trained is not None else load_trained(staged.run_dir, conf, num_labels)
        device = next(reference.parameters()).device
        expected = _logits(reference, tokenizer, texts, device)
        published, random = load_staged(staged, conf, device, num_labels)
        got = _logits(published, tokenizer, texts, device)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError.of("hub.reload_check", f"{what} does not load back ({first})", fix) from err
    if any(e.shape != g.shape for e, g in zip(expected, got)):
        raise UserError.of("hub.reload_check", f"{what} gives logits of another shape than the trained model's", fix)
    diff = max(float((e - g).abs().max()) for e, g in zip(expected, got))
    log.info("reload check: the staged %s reproduces the trained model's logits within %.3g (tolerance %.3g)",
             _KIND_WORDS[staged.kind], diff, atol)
    if not diff <= atol:
        cause = (f": loading it initialises {', '.join(random)} at random, and no staged file holds them" if random
                 else "")
        raise UserError.of("hub.reload_check",
                           f"{what} gives logits that differ from the trained model's by {diff:.3g} (tolerance {atol:g}){cause}", fix)
    return diff

