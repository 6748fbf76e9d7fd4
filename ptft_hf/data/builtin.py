"""Builtin offline corpora: real text that needs no download.

`docs`: English prose from the docstrings of the running interpreter's standard library. The
source files are parsed with `ast` (nothing is imported, so no module runs), walked in sorted
order, and the result is cached as JSON lines keyed by the Python version and the stdlib path.
`licenses`: 47 open-source licence texts shipped inside the package (ptft_hf/data/corpora/licenses,
MIT), one paragraph per document: a legal domain corpus that is the same on every machine (it once
read the installed packages' licence files, so a run's figures changed with the environment).
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
    return _cached_corpus("builtin_docs", lambda: iter_stdlib_docstrings(stdlib), f"{sys.version}|{stdlib}|v2")


# the licence texts shipped inside the package (choosealicense.com's, MIT: SOURCE-LICENSE.md beside them)
LICENSES_DIR = Path(__file__).resolve().parent / "corpora" / "licenses"
_MIN_PARAGRAPH_CHARS = 40


def licence_body(text: str) -> str:
    """A shipped licence file's text: what follows its YAML front matter (the second `---` line)."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        closing = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
        if closing is not None:
            return "\n".join(lines[closing + 1:])
    return text


def iter_shipped_licenses(folder: Path = LICENSES_DIR) -> Iterator[str]:
    """The paragraphs of the licence texts shipped with ptft_hf, files in name order, each
    paragraph reflowed onto one line and kept once (licences share boilerplate: the warranty
    disclaimers), so that a carved eval paragraph never repeats a training one."""
    seen: set[str] = set()
    for path in sorted(folder.glob("*.txt")):
        for paragraph in re.split(r"\n\s*\n", licence_body(path.read_text(encoding="utf-8"))):
            flowed = " ".join(paragraph.split())
            if len(flowed) >= _MIN_PARAGRAPH_CHARS and flowed not in seen:
                seen.add(flowed)
                yield flowed


def _cached_corpus(name: str, texts: Callable[[], Iterator[str]], key_parts: str) -> Path:
    key = hashlib.sha256(key_parts.encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{key}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        count = 0
        with tmp.open("w", encoding="utf-8") as f:
            for text in texts():
                f.write(json.dumps({"text": text}) + "\n")
                count += 1
        os.replace(tmp, path)  # atomic: a crash never leaves a half corpus in the cache
        log.info("built builtin corpus '%s': %d documents -> %s", name, count, path)
    return path


def _builtin_licenses_file() -> Path:
    digest = hashlib.sha256()
    for path in sorted(LICENSES_DIR.glob("*.txt")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return _cached_corpus("builtin_licenses", iter_shipped_licenses, f"shipped|{digest.hexdigest()}|v2")


BUILTIN_CORPORA: dict[str, Callable[[], Path]] = {
    "docs": _builtin_docs_file,
    "licenses": _builtin_licenses_file,
}


def builtin_corpus_file(name: str) -> Path:
    """Path of a JSON-lines file (`text` column) holding the named builtin corpus."""
    return BUILTIN_CORPORA[name]()
