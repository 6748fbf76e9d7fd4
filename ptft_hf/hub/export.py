"""`ptft-hf-export RUN --to gguf`: a finished run's causal LM as a GGUF for llama.cpp, with an Ollama Modelfile.

Steps, after every input is checked (`export_problems`, nothing written before): an adapter is merged
first (`<run>/merged`, `ptft-hf-merge`'s code and check; an existing merge is used as it is);
llama.cpp's own converter writes the GGUF (`gguf_convert`); llama.cpp loads it and it is compared with
the float32 model (`gguf_check`: tokens, log-probabilities within the outtype's tolerance, greedy
answers and where they stop); the Modelfile is written (`modelfile`). Everything goes to a staging
folder renamed into place only when the check passed: a failed check leaves nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptft_hf.errors import Problem, UserError

log = logging.getLogger(__name__)

FORMATS = ("gguf",)
OUTTYPES = ("f16", "q8_0")
# model_type -> (family, the causal-LM class the converter maps): the families trained here that it supports
FAMILIES = {"gpt2": ("GPT-2", "GPT2LMHeadModel"), "llama": ("Llama", "LlamaForCausalLM"), "qwen2": ("Qwen2", "Qwen2ForCausalLM")}
SUPPORTED = ", ".join(f"{family} ({cls})" for family, cls in FAMILIES.values())


@dataclass
class ExportResult:
    output_dir: Path
    gguf: Path
    modelfile: Path
    record: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _run_objective(run_dir: Path) -> Any:
    """The run's objective (registry entry), or None when config.yaml does not name one."""
    import yaml

    path = run_dir / "config.yaml"
    name = ((yaml.safe_load(path.read_text()) or {}).get("objective") or {}).get("name") if path.is_file() else None
    if name is None:
        return None
    from ptft_hf.objectives import find_objective

    return find_objective(str(name))


def _base_config(model_dir: Path) -> dict[str, Any]:
    """The config.json an adapter sits on (its base folder, or a Hub id in the local cache)."""
    base = _read_json(model_dir / "adapter_config.json").get("base_model_name_or_path") or ""
    if (Path(base) / "config.json").is_file():
        return _read_json(Path(base) / "config.json")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(base).to_dict()
    except (OSError, ValueError):
        return {}


def family_problem(run_dir: Path) -> Problem | None:
    """A model the converter cannot take (or that is no causal LM): one line naming the supported families."""
    model_dir = run_dir / "model"
    adapter = (model_dir / "adapter_config.json").is_file()
    config = _base_config(model_dir) if adapter else _read_json(model_dir / "config.json")
    if not config:
        base = _read_json(model_dir / "adapter_config.json").get("base_model_name_or_path")
        return Problem("run_dir", f"the adapter's base model '{base}' cannot be read here" if adapter
                       else f"'{model_dir}' has no config.json", "give a run whose model (or adapter base) is on this machine")
    model_type = config.get("model_type")
    objective = _run_objective(run_dir)
    architecture = (config.get("architectures") or [model_type])[0]
    if adapter:  # the adapter's model is the objective's class on the base
        causal = objective is None or objective.auto_class == "AutoModelForCausalLM"
    else:
        causal = model_type in FAMILIES and architecture == FAMILIES[model_type][1]
    if model_type in FAMILIES and causal:
        return None
    what = (f"objective={objective.name} makes a {objective.auto_class.removeprefix('AutoModelFor')} model"
            if adapter and model_type in FAMILIES and objective is not None else f"{architecture} ({model_type})")
    return Problem("--to gguf", f"{what}: GGUF export takes causal LMs of {SUPPORTED}", "export a causal-LM run of one of them")


def export_problems(run_dir: Path, to: str, outtype: str, output: Path | None, overwrite: bool) -> list[Problem]:
    """Everything wrong with an export's inputs, one problem each, before any work."""
    from ptft_hf.hub.llama_cpp import toolchain_problems
    from ptft_hf.run_dir import FINISHED_MARKER

    problems = []
    if to not in FORMATS:
        problems.append(Problem("--to", f"'{to}' is not an export format", f"use --to {' or '.join(FORMATS)}"))
    if outtype not in OUTTYPES:
        problems.append(Problem("--outtype", f"'{outtype}' is not supported", f"use --outtype {' or '.join(OUTTYPES)}"))
    stages = _read_json(run_dir / FINISHED_MARKER).get("stage_order") if run_dir.is_dir() else None
    if not run_dir.is_dir():
        problems.append(Problem("run_dir", f"no folder at '{run_dir}'", "give a finished run folder"))
    elif stages:
        problems.append(Problem("run_dir", f"'{run_dir}' is a pipeline folder",
                                f"give one stage's folder: {', '.join(str(run_dir / s) for s in stages)}"))
    elif not (run_dir / FINISHED_MARKER).is_file() or not (run_dir / "model").is_dir():
        missing = FINISHED_MARKER if not (run_dir / FINISHED_MARKER).is_file() else "model/"
        problems.append(Problem("run_dir", f"'{run_dir}' holds no finished model ({missing} is missing)",
                                "give the folder of a run that finished (or let it finish: re-run it into the same folder)"))
    else:
        problem = family_problem(run_dir)
        if problem:
            problems.append(problem)
    target = output if output is not None else run_dir / "gguf" / outtype
    if target.exists() and any(target.iterdir()) and not overwrite:
        problems.append(Problem("--output", f"'{target}' is not empty", "choose another folder or add --overwrite"))
    return problems + toolchain_problems()


# Split patterns of the pre-tokenizers transformers builds for a family's tokenizer class (Qwen2Tokenizer
# rebuilds its own whatever tokenizer.json says), and the name llama.cpp gives the same split.
SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
}


def gguf_pretokenizer(folder: Path) -> str | None:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the pre-tokenizer of the tokenizer as transformers loads
    it from `folder`: `gpt-2` for byte-level with GPT-2's split (every byte-level BPE trained here), `qwen2`
    or `llama-bpe` for those families' split patterns before a byte-level step; None otherwise (the
    converter then names it from its table of published vocabularies, or refuses). The check in
    llama.cpp then compares the token ids of every check text."""
    from transformers import AutoTokenizer

    backend = getattr(AutoTokenizer.from_pretrained(str(folder)), "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if spec.get("normalizer") not in (None, {"type": "NFC"}):  # Qwen2's class adds NFC, as Qwen's own tokenizer.json has
        return None
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        return "gpt-2" if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    steps = pre.get("pretokenizers") or []
    if pre.get("type") != "Sequence" or len(steps) != 2:
        return None
    split, byte_level = steps
    plain_bytes = byte_level.get("type") == "ByteLevel" and not byte_level.get("use_regex", True) \
        and not byte_level.get("add_prefix_space")
    isolated = split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
    return SPLIT_PATTERNS.get((split.get("pattern") or {}).get("Regex", "")) if plain_bytes and isolated else None


def _source_folder(run_dir: Path, atol: float) -> tuple[Path, bool]:
    """The full model to convert: model/, or the adapter merged (existing merged/, else merged now)."""
    if not (run_dir / "model" / "adapter_config.json").is_file():
        return run_dir / "model", False
    if (run_dir / "merged" / "config.json").is_file():
        log.info("using the merged model in %s", run_dir / "merged")
        return run_dir / "merged", True
    from ptft_hf.hub.merge import merge_adapter

    log.info("merging the adapter first (ptft-hf-merge %s)", run_dir)
    return merge_adapter(run_dir, atol=atol).output_dir, True


def convert(folder: Path, outfile: Path, outtype: str, converter: Path, name: str) -> float:
    """llama.cpp's converter in its own process (`name`: the GGUF's general.name); returns its wall time.
    Its failure is one line."""
    pre = gguf_pretokenizer(folder)
    command = [sys.executable, "-m", "ptft_hf.hub.gguf_convert", str(converter), *(["--pre", pre] if pre else []), "--",
               str(folder), "--outfile", str(outfile), "--outtype", outtype, "--model-name", name]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise UserError.of("converter", f"llama.cpp's convert_hf_to_gguf.py failed: {last[0].strip()}",
                           "nothing was saved; run with --verbose to see its log")
    log.debug("converter log:\n%s", done.stderr)
    return time.perf_counter() - start


def _chat_renderer(run_dir: Path, tokenizer: Any) -> Any:
    """The renderer the run trained with: its plain template (SFT without the tokenizer's), else the
    tokenizer's chat template; None for a model without either."""
    from ptft_hf.hub.modelfile import renderer

    plain = None
    objective = _run_objective(run_dir)
    if objective is not None and objective.reads_chat:
        from ptft_hf.hub.stage import load_run_config

        settings = load_run_config(run_dir).objective
        if not (getattr(settings, "use_tokenizer_template", True) and getattr(tokenizer, "chat_template", None)):
            from ptft_hf.config.schema import PLAIN_CHAT_TEMPLATE
            from ptft_hf.data.chat import PlainTemplate

            plain = PlainTemplate(**dict(getattr(settings, "template", None) or PLAIN_CHAT_TEMPLATE))
    return renderer(tokenizer, plain)


def _gguf_metadata(path: Path) -> dict[str, Any]:
    """A few fields of the written GGUF, read back with the `gguf` package."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    keys = ("general.architecture", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token")
    meta = {key: fields[key].contents() for key in keys if key in fields}
    meta["chat_template"] = "tokenizer.chat_template" in fields
    meta["general.name"] = fields["general.name"].contents() if "general.name" in fields else None
    return meta


def export_run(run_dir: str | Path, outtype: str = "f16", device: str = "cpu", output: str | Path | None = None,
               overwrite: bool = False, atol: float = 1e-3) -> ExportResult:
    """Export the finished run at `run_dir` to GGUF (`outtype` f16 or q8_0) and check it in llama.cpp;
    the reference model runs on `device`. Raises UserError for bad inputs (before any work) and for a
    failed check (nothing saved)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ptft_hf.hub.gguf_check import check_gguf
    from ptft_hf.hub.llama_cpp import toolchain
    from ptft_hf.hub.merge import CHECK_QUESTIONS, CHECK_TEXTS
    from ptft_hf.hub.modelfile import modelfile, read_pieces, without_runtime_bos

    run_dir = Path(run_dir)
    output_dir = Path(output) if output is not None else run_dir / "gguf" / outtype
    problems = export_problems(run_dir, "gguf", outtype, output_dir, overwrite)
    if problems:
        raise UserError(problems)
    tools = toolchain()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    folder, merged = _source_folder(run_dir, atol)
    seconds["merge"] = time.perf_counter() - start
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    new_parent = not output_dir.parent.exists()
    staging.mkdir(parents=True)
    gguf_path = staging / "model.gguf"
    try:
        seconds["convert"] = convert(folder, gguf_path, outtype, tools.converter, run_dir.name)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True).to(device).eval()
        stops = GenerationConfig.from_pretrained(str(folder)).eos_token_id if (folder / "generation_config.json").is_file() \
            else tokenizer.eos_token_id
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        render = _chat_renderer(run_dir, tokenizer)
        prompts = [render([{"role": "user", "content": q}], True) for q in CHECK_QUESTIONS] if render else list(CHECK_TEXTS[:2])
        check = check_gguf(gguf_path, model, tokenizer, outtype, prompts, stops)
        seconds["check"] = time.perf_counter() - start
        meta = _gguf_metadata(gguf_path)
        pieces = read_pieces(render) if render else None
        if pieces is not None and meta.get("tokenizer.ggml.add_bos_token"):
            pieces = without_runtime_bos(pieces, tokenizer.bos_token)
        if render is not None and pieces is None:
            log.warning("the chat template is not one of text around each message: the Modelfile has no chat TEMPLATE "
                        "(Ollama falls back to the GGUF's tokenizer.chat_template)")
        stop_tokens = tokenizer.convert_ids_to_tokens(stops)
        (staging / "Modelfile").write_text(modelfile(gguf_path.name, pieces, stop_tokens,
                                                      f"{run_dir.name}/{folder.name}"), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if new_parent:
            shutil.rmtree(output_dir.parent, ignore_errors=True)
        raise
    record = {"format": "gguf", "outtype": outtype, "source": str(folder), "merged": merged,
              "llama_cpp_python": tools.version, "converter": str(tools.converter / "convert_hf_to_gguf.py"),
              "pre_tokenizer": gguf_pretokenizer(folder), "gguf": meta, "bytes": gguf_path.stat().st_size,
              "modelfile": {"chat_template": pieces is not None, "stops": stop_tokens},
              "check": check.record(), "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    (staging / "export.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    return ExportResult(output_dir, output_dir / "model.gguf", output_dir / "Modelfile", record)
