"""Document builders for the perplexity tasks (lm-eval `process_docs`) and BLiMP's prompt and choices,
copied beside the rendered YAMLs."""

from __future__ import annotations

import re

from datasets import Dataset

_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(dataset: Dataset) -> Dataset:
    """WikiText-2's file (one row) split into articles at its top-level ` = Title = ` lines."""
    articles: list[list[str]] = []
    for line in "\n".join(dataset["text"]).split("\n"):
        if _ARTICLE_TITLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    texts = ["\n".join(lines).strip("\n") for lines in articles]
    return Dataset.from_dict({"text": [t for t in texts if t.strip()]})


def licence_texts(dataset: Dataset) -> Dataset:
    """Each licence file's text after its YAML front matter (the second `---` line)."""
    texts = []
    for text in dataset["text"]:
        parts = text.split("---\n", 2)
        texts.append((parts[2] if text.startswith("---") and len(parts) == 3 else text).strip())
    return Dataset.from_dict({"text": texts})


def no_prompt(doc: dict) -> str:
    """BLiMP scores each whole sentence: no context before it."""
    return ""


def blimp_pair(doc: dict) -> list[str]:
    """The acceptable sentence first (the target, 0), then the unacceptable one."""
    return [doc["sentence_good"], doc["sentence_bad"]]
