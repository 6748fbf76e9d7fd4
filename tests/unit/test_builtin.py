from __future__ import annotations

import json

import pytest

from ptft_hf.data.builtin import builtin_corpus_file, iter_stdlib_docstrings, prose_of


def test_prose_keeps_sentences_and_drops_code():
    doc = (
        "Return the sum of a list.\n"
        "Wraps at the margin.\n"
        "\n"
        "Example:\n"
        "    >>> total([1, 2])\n"
        "    3\n"
        "\n"
        ">>> total([])\n"
        "0\n"
        "\n"
        "Empty lists give zero."
    )
    assert prose_of(doc) == "Return the sum of a list. Wraps at the margin.\nEmpty lists give zero."


def test_stdlib_docstrings_are_deterministic_and_real():
    first = [d for _, d in zip(range(200), iter_stdlib_docstrings())]
    second = [d for _, d in zip(range(200), iter_stdlib_docstrings())]
    assert first == second
    assert len(first) == 200
    assert all(len(d) >= 80 and ">>>" not in d for d in first)


@pytest.mark.slow
def test_builtin_corpus_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PTFT_HF_CACHE", str(tmp_path))
    path = builtin_corpus_file("docs")
    assert path.parent == tmp_path
    stamp = path.stat().st_mtime_ns
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) > 2000 and sum(len(r["text"]) for r in rows) > 500_000
    assert builtin_corpus_file("docs").stat().st_mtime_ns == stamp  # reused, not rebuilt
