"""`ptft-hf-export RUN_DIR --to gguf [--outtype f16|q8_0]`: a run's causal LM as a GGUF checked in llama.cpp,
with an Ollama Modelfile; `ptft-hf-export --install` builds (once per machine) and installs the llama.cpp
runtime and converter it uses."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ptft_hf.errors import Problem, UserError, report_problems

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

PROG = "ptft-hf-export"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a finished run's causal LM (GPT-2, Llama, Qwen2; an adapter is merged first) to GGUF with "
                    "llama.cpp's own converter, check it in llama.cpp against the float32 model (tokens, log-probabilities "
                    "within the outtype's tolerance, greedy answers and their stop) and write an Ollama Modelfile "
                    "beside it (default folder: RUN_DIR/gguf/OUTTYPE).",
    )
    parser.add_argument("run_dir", nargs="?", help="a finished run folder (for a pipeline, one stage's folder)")
    parser.add_argument("--to", default="gguf", help="export format: gguf")
    parser.add_argument("--outtype", default="f16", help="f16 (default) or q8_0")
    parser.add_argument("--device", help="where the reference model runs for the check (cpu, cuda, cuda:N, mps; "
                                         "default: CUDA, else MPS, else CPU); llama.cpp runs on the CPU")
    parser.add_argument("--output", help="folder for the GGUF, Modelfile and export.json (default RUN_DIR/gguf/OUTTYPE)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--install", action="store_true",
                        help="build llama-cpp-python from its PyPI sdist (once per machine, cached) and install it and "
                             "llama.cpp's converter into this environment")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and the converter's log")
    return parser


def _install() -> int:
    from ptft_hf.hub.llama_cpp import install

    record = install()
    print("llama.cpp runtime and converter installed: " + ", ".join(f"{k} {v}" for k, v in record.items()))
    return 0


def export_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.install:
        return _install()
    try:
        if not args.run_dir:
            raise UserError.of("run_dir", "missing", f"give a finished run folder: {PROG} RUN_DIR --to gguf")
        from ptft_hf.api import pick_device
        from ptft_hf.hub.export import export_problems, export_run

        problems: list[Problem] = []
        try:
            device = pick_device(args.device)
        except UserError as err:
            problems += err.problems
            device = "cpu"
        run_dir = Path(args.run_dir).expanduser().resolve()
        output = Path(args.output).expanduser().resolve() if args.output else None
        problems += export_problems(run_dir, args.to, args.outtype, output if output else run_dir / "gguf" / args.outtype,
                                    args.overwrite)
        if problems:
            raise UserError(problems)
        result = export_run(run_dir, args.outtype, device, output, args.overwrite)
    except UserError as err:
        if args.verbose:
            raise
        return report_problems(PROG, err)
    check = result.record["check"]
    answers = "; ".join(f"{a['text']!r}" for a in check["answers"])
    print(f"GGUF ({args.outtype}) written to {result.gguf} with {result.modelfile.name}; checked in llama.cpp: largest "
          f"log-probability difference {check['max_logprob_diff']:.3g} nats (tolerance {check['tolerance']:g}) over "
          f"{check['positions']} positions, greedy answers {answers}; {sum(result.record['seconds'].values()):.1f} s")
    return 0


def main() -> None:
    sys.exit(export_main())


if __name__ == "__main__":
    main()
