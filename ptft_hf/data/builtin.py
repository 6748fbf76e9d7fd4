"""Builtin offline corpora: real text that every machine already has, so no download is needed.

`docs`: English prose from the docstrings of the running interpreter's standard library. The
source files are parsed with `ast` (nothing is imported, so no module runs), walked in sorted
order, and the result is cached as JSON lines keyed by the Python version and the stdlib path.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

from ptft_hf.paths import cache_dir

log = logging.getLogger(__name__)

# Folders of the stdlib that hold tests, GUI demos or vendored code rather than documentation.
_SKIP_DIRS = {
    "test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "tkinter",
    "turtledemo", "ensurepip", "__pycache__", "pydoc_data", "distutils",
}
_MIN_DOC_CHARS = 80  # shorter docstrings are mostly one-line signatures, not prose
_CODE_LINE = re.compile(r"^(\s|>>>|\.\.\.|[-=*]{3,}|[A-Za-z_][\w.]*\(.*\)\s*(->.*)?$)")


def prose_of(docstring: str) -> str:
    """Keep a docstring's prose paragraphs, each reflowed onto one line.

    Docstrings wrap lines at ~72 columns and embed code examples; a language model learns
    more from sentences than from hard line breaks and doctest prompts.
    """
    paragraphs = []
    for block in re.split(r"\n\s*\n", docstring):
        lines = block.splitlines()
        if not lines or any(_CODE_LINE.match(line) for line in lines):
            continue
        paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n".join(paragraphs)


def _docstrings_of(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        prose = prose_of(doc) if doc else ""
        if len(prose) >= _MIN_DOC_CHARS:
            yield prose


def iter_stdlib_docstrings(stdlib: str | None = None) -> Iterator[str]:
    """Yield the stdlib's docstrings in a deterministic order (sorted walk, source order)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield from _docstrings_of(Path(dirpath) / name)


def _builtin_docs_file() -> Path:
    stdlib = sysconfig.get_paths()["stdlib"]
    key = hashlib.sha256(f"{sys.version}|{stdlib}|v2".encode()).hexdigest()[:12]
    path = cache_dir() / f"builtin_docs-{key}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        count = 0
        with tmp.open("w", encoding="utf-8") as f:
            for doc in iter_stdlib_docstrings(stdlib):
                f.write(json.dumps({"text": doc}) + "\n")
                count += 1
        os.replace(tmp, path)  # atomic: a crash never leaves a half corpus in the cache
        log.info("built builtin corpus 'docs': %d docstrings -> %s", count, path)
    return path


BUILTIN_CORPORA: dict[str, Callable[[], Path]] = {
    "docs": _builtin_docs_file,
}


def builtin_corpus_file(name: str) -> Path:
    """Path of a JSON-lines file (`text` column) holding the named builtin corpus."""
    return BUILTIN_CORPORA[name]()
