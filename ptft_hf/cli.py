"""Command-line entry points: compose the config with Hydra and call the recipe. No logic here
beyond turning user mistakes into one-line messages with a non-zero exit."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ptft_hf.config import schema  # noqa: F401  (registers the schema with Hydra's ConfigStore)
from ptft_hf.config.errors import describe_compose_error
from ptft_hf.config.redact import redact_file, redact_text, secret_values
from ptft_hf.distributed import is_distributed_launch, launched_rank_and_world, record_error_for_launcher
from ptft_hf.errors import UserError
from ptft_hf.run_dir import FolderSnapshot, guard_run_dir, has_started
from ptft_hf.paths import conf_dir

# bitsandbytes warns at import that an optional CPU kernel package is absent; not actionable.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

EXIT_USER_ERROR = 2
_OURS = "PTFT_HF_HYDRA_FULL_ERROR_SET"  # marks a HYDRA_FULL_ERROR=1 that the CLI set, not the user (see verbose_requested)
PROG = "ptft-hf"
_SNAPSHOT: FolderSnapshot | None = None  # Hydra's files in an existing run folder, put back after a failed start


def verbose_requested(argv: list[str] | None = None) -> bool:
    """`verbose=true` on the command line (or PTFT_HF_VERBOSE=1 / HYDRA_FULL_ERROR=1) shows tracebacks."""
    argv = sys.argv[1:] if argv is None else argv
    asked_hydra = os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_OURS) != "1"  # not our own switch
    if os.environ.get("PTFT_HF_VERBOSE") == "1" or asked_hydra:
        return True
    return any(a.lstrip("+~").lower() in ("verbose=true", "verbose=1", "verbose=yes") for a in argv)


def report_user_error(lines: list[str]) -> None:
    """One line per problem on stderr. Several processes: rank 0 prints them (every rank found the
    same), the others only log them to their own file; every rank hands them to torchrun as its
    error file, so the launcher's failure summary shows them instead of "To enable traceback see"."""
    rank = launched_rank_and_world()[0]
    record_error_for_launcher("\n".join(f"{PROG}: error: {line}" for line in lines))
    if rank > 0:
        if logging.getLogger().handlers:  # the rank's own log file; before Hydra set it up, nothing
            for line in lines:
                logging.getLogger(__name__).error("%s: error: %s", PROG, line)
        return
    for line in lines:
        sys.stderr.write(f"{PROG}: error: {line}\n")
    sys.stderr.write(f"{PROG}: (add verbose=true to see the traceback)\n")


@contextlib.contextmanager
def _compose_errors_reach_us() -> Iterator[None]:
    """Let Hydra's composition errors (unknown option, unknown key, bad override) reach our caller.

    Hydra prints an exception raised while it composes or runs a job, and exits with status 1,
    unless `HYDRA_FULL_ERROR=1` (its documented switch), which makes it raise the exception
    instead; `main` then reports config mistakes as one line naming the field and the fix, with
    status 2. Anything else (a bug) goes on to Python's report, with the whole traceback. The
    variable is put back afterwards, so it is set only while Hydra runs in this process.
    """
    previous = {name: os.environ.get(name) for name in ("HYDRA_FULL_ERROR", _OURS)}
    if previous["HYDRA_FULL_ERROR"] != "1":  # the user's HYDRA_FULL_ERROR=1 still means verbose (here and in children)
        os.environ.update({"HYDRA_FULL_ERROR": "1", _OURS: "1"})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _redact_hydra_record(cfg: DictConfig) -> None:
    """Hydra saved the config and the command line (`.hydra/`, `multirun.yaml`) as typed: blank
    tokens, passwords and keys there (and the environment's HF_TOKEN) before anything else runs."""
    hydra_cfg = HydraConfig.get()
    secrets = secret_values(OmegaConf.to_container(cfg, resolve=False), list(hydra_cfg.overrides.task))
    if not secrets:
        return
    files = []
    if hydra_cfg.output_subdir is not None:
        files += sorted((Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml"))
    if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    for path in files:
        redact_file(path, secrets)


def _report_interrupted(err: Any, run_dir: str) -> None:
    where = f"checkpoint saved in {err.checkpoint}" if err.checkpoint else "no checkpoint saved yet"
    sys.stderr.write(f"{PROG}: interrupted by {err} ({where}); to resume, run the same command with "
                     f"hydra.run.dir={run_dir}\n")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _train(cfg: DictConfig) -> float:
    from ptft_hf.recipe import run  # heavy imports only once the config composed
    from ptft_hf.pipeline import run_pipeline, shared_overrides
    from ptft_hf.training.safety import Interrupted

    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    try:
        _redact_hydra_record(cfg)
        if cfg.stages:
            shared = shared_overrides(list(hydra_cfg.overrides.task))
            summary = run_pipeline(cfg, run_dir, shared)
            return float(list(summary["stages"].values())[-1].get("eval_loss", float("nan")))
        metrics = run(cfg, run_dir)
    except UserError as err:
        _restore_if_not_started(run_dir)
        if cfg.verbose:
            raise
        report_user_error([str(p) for p in err.problems])
        sys.exit(EXIT_USER_ERROR)
    except Interrupted as err:
        _report_interrupted(err, run_dir)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        _restore_if_not_started(run_dir)
        if cfg.verbose:
            raise
        sys.stderr.write(f"{PROG}: interrupted before training started; nothing to resume\n")
        sys.exit(130)
    except BaseException:
        _restore_if_not_started(run_dir)
        raise
    return float(metrics.get("eval_loss", float("nan")))  # what Hydra sweepers optimise


def _restore_if_not_started(run_dir: str) -> None:
    """A run that failed before writing anything leaves an existing folder as it found it."""
    if _SNAPSHOT is not None and Path(run_dir).resolve() == _SNAPSHOT.run_dir.resolve() and not has_started(Path(run_dir)):
        _SNAPSHOT.restore()


def _explicit_run_dir(argv: list[str]) -> Path | None:
    """The folder named by `hydra.run.dir=...` on a single-run command line, if any."""
    if "-m" in argv or "--multirun" in argv:
        return None
    for arg in argv:
        if arg.startswith("hydra.run.dir=") and "${" not in arg:
            return Path(arg.split("=", 1)[1]).expanduser()
    return None


def _redact_log_records(secrets: set[str]) -> None:
    """Blank secrets in every log record (Hydra's launcher logs each job's overrides, for one)."""
    if not secrets:
        return
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return record
        if any(secret in message for secret in secrets):
            record.msg, record.args = redact_text(message, secrets), None
        return record

    logging.setLogRecordFactory(factory)


def main() -> None:
    """`ptft-hf [overrides]`: compose conf/ with Hydra and run (under torchrun or accelerate
    launch: every rank, in rank 0's run folder; see `ptft_hf.distributed`)."""
    argv = sys.argv[1:]
    _redact_log_records(secret_values(argv))
    rank = 0
    if is_distributed_launch():
        from ptft_hf.distributed import agree_on_launch_time, rank_overrides

        agree_on_launch_time()
        rank = launched_rank_and_world()[0]
        sys.argv = [sys.argv[0], *argv, *rank_overrides(rank)]
    run_dir = _explicit_run_dir(argv)
    overwrite = any(a.lstrip("+").lower() in ("overwrite=true", "overwrite=1") for a in argv)
    if run_dir is not None:
        # Hydra writes .hydra/ into the folder before the job starts: refuse before it does,
        # and keep a copy of what it will overwrite in case the run fails before it starts.
        try:
            guard_run_dir(run_dir, overwrite)
        except UserError as err:
            report_user_error([str(p) for p in err.problems])
            sys.exit(EXIT_USER_ERROR)
        global _SNAPSHOT
        if rank == 0:  # the folder is rank 0's to write and to put back
            _SNAPSHOT = FolderSnapshot(run_dir)
    verbose = verbose_requested(argv)  # before HYDRA_FULL_ERROR is ours to set
    try:
        with _compose_errors_reach_us():
            _train()
    except (HydraException, OmegaConfBaseException) as err:
        if verbose:
            raise
        report_user_error([describe_compose_error(err)])
        sys.exit(EXIT_USER_ERROR)
    finally:
        if is_distributed_launch():
            from ptft_hf.distributed import release_process_group

            release_process_group()
