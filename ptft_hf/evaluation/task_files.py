"""The shipped lm-eval task YAMLs, rendered with the data root filled in.

The YAMLs in `tasks/` hold `@DATA_ROOT@` (and, for BLiMP, one file per paradigm) placeholders;
`render_tasks` writes the filled-in files into a folder that `lm_eval.tasks.TaskManager(include_path=...)`
reads, and returns their hashes, which `eval.json` records. Nothing here imports lm-eval or torch,
so the task names and data files are checked before any model is loaded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ptft_hf.errors import Problem

TEMPLATES = Path(__file__).parent / "tasks"
# task name -> the data files it reads, relative to the data root
DATA_FILES: dict[str, tuple[str, ...]] = {
    "blimp": ("eval/blimp/data",),
    "banking77": ("banking77/train.csv", "banking77/test.csv", "banking77/categories.json"),
    "chemprot": ("medical/chemprot/train.csv", "medical/chemprot/test.csv"),
    "wikitext2": ("wikitext-2/test.txt",),
    "legal": ("licenses",),
}
KNOWN_TASKS = tuple(DATA_FILES)
# a stage's `data.name` -> the shipped task that scores its held-out part: the stage's own task in the
# evaluation matrix (data with no task here, e.g. builtin_docs or medical_abstracts, gives its stage none)
DATA_TASKS: dict[str, str] = {"wikitext2": "wikitext2", "licenses": "legal", "builtin_licenses": "legal",
                              "banking77": "banking77", "chemprot": "chemprot"}
# data that trains on the very texts its task scores (the shipped corpus holds all 47 licences)
NOT_HELD_OUT = ("builtin_licenses",)
# task family -> the metric the matrix shows and whether higher is better; the perplexity tasks in bits
# per byte: readable, and comparable across tokenizers (word perplexity runs to 1e7 for a weak model)
TASK_METRICS: dict[str, tuple[str, bool]] = {"blimp": ("acc", True), "banking77": ("acc", True), "chemprot": ("acc", True),
                                             "wikitext2": ("bits_per_byte", False), "legal": ("bits_per_byte", False)}
# multiple choice over a classifier's label names: a classifier's own task is its head's test accuracy
LABEL_TASKS = ("banking77", "chemprot")
BLIMP_PREFIX = "blimp_"


def default_data_root() -> Path:
    """`PTFT_HF_SHARED_DATA`, else `../shared/data` from the working folder (as the shipped configs)."""
    return Path(os.environ.get("PTFT_HF_SHARED_DATA", "../shared/data"))


def blimp_paradigms(data_root: Path) -> list[str]:
    """The paradigm UIDs present under `eval/blimp/data/` (67 in the full benchmark)."""
    return sorted(p.stem for p in (data_root / "eval/blimp/data").glob("*.jsonl"))


def task_family(name: str) -> str:
    """`blimp_<paradigm>` belongs to `blimp`; the others are their own family."""
    return "blimp" if name.startswith(BLIMP_PREFIX) else name


def task_problems(tasks: list[str], data_root: Path, field: str = "tasks") -> list[Problem]:
    """Unknown task names (listing the known ones) and missing data files (giving the path)."""
    problems = []
    for name in tasks:
        family = task_family(name)
        if family not in DATA_FILES:
            problems.append(Problem(field, f"unknown task '{name}'",
                                    f"choose from {', '.join(KNOWN_TASKS)} (or blimp_<paradigm>)"))
            continue
        missing = [data_root / rel for rel in DATA_FILES[family] if not (data_root / rel).exists()]
        if name != family and not missing and not (data_root / "eval/blimp/data" / f"{name[len(BLIMP_PREFIX):]}.jsonl").is_file():
            missing = [data_root / "eval/blimp/data" / f"{name[len(BLIMP_PREFIX):]}.jsonl"]
        for path in missing:
            problems.append(Problem(field, f"task '{name}' needs {path}, which does not exist",
                                    "set data_root= (eval.data_root) to the folder holding the shared data, "
                                    "or PTFT_HF_SHARED_DATA"))
    return problems


@dataclass
class RenderedTasks:
    """Task YAMLs written into `folder` for lm-eval, and the sha256 of each file written."""

    folder: Path
    names: list[str]
    file_sha256: dict[str, str] = field(default_factory=dict)


def render_tasks(tasks: list[str], data_root: Path, folder: Path) -> RenderedTasks:
    """Write the YAMLs `tasks` need into `folder`, the data root made absolute."""
    root = str(data_root.resolve())
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def write(name: str, text: str) -> None:
        (folder / name).write_text(text, encoding="utf-8")
        written[name] = hashlib.sha256(text.encode()).hexdigest()

    families = {task_family(t) for t in tasks}
    if "blimp" in families:  # the group needs every paradigm; single paradigms only themselves
        template = (TEMPLATES / "blimp_paradigm.yaml").read_text(encoding="utf-8")
        paradigms = blimp_paradigms(data_root) if "blimp" in tasks else [t[len(BLIMP_PREFIX):] for t in tasks
                                                                          if t.startswith(BLIMP_PREFIX)]
        for paradigm in paradigms:
            write(f"blimp_{paradigm}.yaml", template.replace("@PARADIGM@", paradigm).replace("@DATA_ROOT@", root))
        if "blimp" in tasks:
            group = (TEMPLATES / "blimp.yaml").read_text(encoding="utf-8")
            write("blimp.yaml", group.replace('"@PARADIGM_TASKS@"', json.dumps([f"blimp_{p}" for p in paradigms])))
    choices = {"banking77": lambda: json.loads((data_root / "banking77/categories.json").read_text(encoding="utf-8")),
               "chemprot": lambda: _csv_labels(data_root / "medical/chemprot/train.csv", "label")}
    for family in sorted(families - {"blimp"}):
        text = (TEMPLATES / f"{family}.yaml").read_text(encoding="utf-8").replace("@DATA_ROOT@", root)
        if family in choices:
            text = text.replace("@CHOICES@", json.dumps(choices[family]()))
        write(f"{family}.yaml", text)
    # the documents' builders (`!function documents.*`): every shipped task uses at least one
    shutil.copyfile(TEMPLATES / "documents.py", folder / "documents.py")
    written["documents.py"] = hashlib.sha256((folder / "documents.py").read_bytes()).hexdigest()
    return RenderedTasks(folder, list(tasks), written)


def _csv_labels(path: Path, column: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return sorted({row[column] for row in csv.DictReader(f)})
