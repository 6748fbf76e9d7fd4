"""`ptft-hf-eval PATH [tasks=blimp,banking77] [num_fewshot=N] [limit=N] [batch_size=N] [data_root=DIR]
[dtype=auto|float32|bfloat16] [device=cpu|cuda] [processes=N]`: score a finished run (or every stage of a pipeline
folder) with lm-evaluation-harness and write eval.json beside each model (BLiMP's paradigms shared among
`processes` forked processes on a CPU, one per core by default).
`ptft-hf-eval PIPELINE matrix=true [matrix.limit.blimp=20 ...]`: the pipeline's evaluation matrix
(eval_matrix.json, report.md written again with it at the top), its stages as they are."""

from __future__ import annotations

import json
import logging
import sys

from ptft_hf.errors import Problem, UserError

PROG = "ptft-hf-eval"
EXIT_USER_ERROR = 2
_INTS = ("num_fewshot", "limit", "batch_size", "processes")
_STRINGS = ("data_root", "dtype", "device")


def parse_arguments(argv: list[str]) -> tuple[str, dict]:
    """PATH and `key=value` pairs, as the main CLI; every mistake is a one-line problem."""
    paths = [a for a in argv if "=" not in a]
    pairs = [a.split("=", 1) for a in argv if "=" in a]
    problems = [] if len(paths) == 1 else [Problem("PATH", f"expected one run folder, got {len(paths)}",
                                                   f"usage: {PROG} PATH [tasks=blimp] [num_fewshot=N] [limit=N]")]
    options: dict = {"tasks": ["blimp"]}
    for key, value in pairs:
        if key == "tasks":
            options["tasks"] = [t.strip() for t in value.strip("[]").split(",") if t.strip()]
        elif key in _INTS:
            try:
                options[key] = None if value.lower() in ("null", "none") else int(value)
            except ValueError:
                problems.append(Problem(key, f"'{value}' is not a whole number", f"give e.g. {key}=5"))
        elif key in _STRINGS:
            options[key] = value
        elif key == "matrix":
            options["matrix"] = value.lower() in ("true", "1", "yes")
        elif key.startswith("matrix."):
            options.setdefault("matrix_settings", []).append(f"{key}={value}")
        elif key != "verbose":
            problems.append(Problem(key, "is not an option of ptft-hf-eval",
                                    f"use one of tasks, {', '.join(_INTS + _STRINGS)}, matrix, matrix.<key>"))
    if problems:
        raise UserError(problems)
    return paths[0], options


def eval_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = any(a.lower() in ("verbose=true", "verbose=1") for a in argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    try:
        from ptft_hf.evaluation.score import EvalRequest, score_run

        path, options = parse_arguments(argv)
        if options.pop("matrix", False) or options.get("matrix_settings"):
            from ptft_hf.pipeline.rescore import rescore_matrix  # an entry point: the pipeline's report is rewritten

            rescore_matrix(path, options.get("matrix_settings", []))
            sys.stdout.write(f"{path}/eval_matrix.json and {path}/report.md written\n")
            return 0
        written = score_run(path, EvalRequest(**options))
    except UserError as err:
        if verbose:
            raise
        for problem in err.problems:
            sys.stderr.write(f"{PROG}: error: {problem}\n")
        return EXIT_USER_ERROR
    for eval_path, record in written.items():
        headline = {k: v for k, v in record["results"].items() if not k.startswith("blimp_")}
        sys.stdout.write(f"{eval_path}: {json.dumps(headline, sort_keys=True)}\n")
    return 0


def main() -> None:
    sys.exit(eval_main())
