"""`ptft-hf-push RUN_DIR`: publish a finished run's adapter or model to the Hugging Face Hub.

The run's own `hub:` settings (config.yaml) are the defaults; the flags override them. The
staged folder is reload-checked before anything is uploaded; `--dry-run` stops there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from ptft_hf.errors import UserError, report_problems

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

PROG = "ptft-hf-push"
_FLAGS = {"repo_id": "--repo-id", "merged": "--merged", "atol": "--atol", "push": "HF_TOKEN"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Stage a finished run's adapter (or full model) with its tokenizer and a model card, check that "
                    "the staged folder reproduces the trained model's logits, and upload it to the Hub (private "
                    "unless --public). The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("run_dir", help="a finished run folder (with model/ and metrics.json); for a pipeline, one stage's folder")
    parser.add_argument("--repo-id", help="user/name on the Hub (default: the run's hub.repo_id)")
    parser.add_argument("--dry-run", action="store_true", help="stage and check only; upload nothing")
    parser.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    parser.add_argument("--merged", action="store_true", help="adapters: publish the adapter merged into its base")
    parser.add_argument("--commit-message", help="default: names the run")
    parser.add_argument("--revision", help="branch to push to (created if absent; default: main)")
    parser.add_argument("--staging-dir", help="where to stage (default: RUN_DIR/hub)")
    parser.add_argument("--atol", type=float, help="largest allowed logit difference in the reload check (default 1e-4)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    return parser


def _pipeline_stages(run_dir: Path) -> list[str]:
    import json

    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return []
    return list(json.loads(metrics_path.read_text(encoding="utf-8")).get("stage_order") or [])


def hub_settings(run_dir: Path, args: argparse.Namespace):
    """The run's hub section with the command line's flags on top; validated like a config."""
    from ptft_hf.hub.checks import hub_problems
    from ptft_hf.objectives import get_objective
    from ptft_hf.strategies import strategy_class
    from ptft_hf.hub.stage import load_run_config

    stages = _pipeline_stages(run_dir)
    if stages:
        raise UserError.of("run_dir", f"'{run_dir}' is a pipeline folder",
                           f"give one stage's folder: {', '.join(str(run_dir / s) for s in stages)}")
    conf = load_run_config(run_dir)
    overrides = {"push": True, "dry_run": args.dry_run, "private": conf.hub.private and not args.public,
                 "merged": conf.hub.merged or args.merged}
    for name in ("repo_id", "commit_message", "revision", "atol"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.staging_dir:
        overrides["dir"] = args.staging_dir
    hub = dataclasses.replace(conf.hub, **overrides)
    problems = hub_problems(hub, strategy_class(conf.strategy.name), get_objective(conf.objective.name), name=lambda key: _FLAGS.get(key, f"hub.{key}"))
    if problems:
        raise UserError(problems)
    return hub


def push_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_dir = Path(args.run_dir).expanduser().resolve()
    try:
        if not run_dir.is_dir():
            raise UserError.of("run_dir", f"no folder at '{run_dir}'", "give a finished run folder")
        hub = hub_settings(run_dir, args)
        from ptft_hf.hub.publish import publish_run

        published = publish_run(run_dir, hub)
    except UserError as err:
        if args.verbose:
            raise
        return report_problems(PROG, err)
    staged = published.staged
    print(f"staged {staged.kind} in {staged.folder}: {', '.join(staged.files)}; reload check: largest logit "
          f"difference {published.max_abs_diff:.3g} (tolerance {hub.atol:g})")
    if published.pushed:
        print(f"pushed to {published.pushed.url} ({'private' if hub.private else 'public'})"
              + (f": {published.pushed.commit_url}" if published.pushed.commit_url else ""))
    else:
        print("dry run: nothing uploaded")
    return 0


def main() -> None:
    sys.exit(push_main())


if __name__ == "__main__":
    main()
