"""Document builders for the perplexity tasks (lm-eval `process_docs`) and BLiMP's prompt and choices,
copied beside the rendered YAMLs."""

from __future__ import annotations

import re
import weakref

from datasets import Dataset

# The seed of the labelled tasks' document order: their CSVs are sorted by label, so a `limit` (the
# first N documents, as lm-eval takes them) would otherwise score one or two classes only
DOCUMENT_ORDER_SEED = 1234
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


def seeded_order(dataset: Dataset) -> Dataset:
    """The documents in one fixed shuffled order (numpy's PCG64 permutation with DOCUMENT_ORDER_SEED,
    as `Dataset.shuffle` draws it): the same in every run and process, and a limited evaluation
    scores a sample of every class rather than the first label's block. The full split's scores
    do not change (the order of a mean); few-shot examples are drawn from the shuffled training rows."""
    return dataset.shuffle(seed=DOCUMENT_ORDER_SEED).flatten_indices()


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


class DocumentList(list):
    """A split's documents as plain dicts, with the `features` lm-eval reads from a split.

    lm-eval iterates a task's documents three times (building its requests, the few-shot pool,
    scoring the answers); from a `datasets.Dataset` each row is decoded from Arrow on every pass
    (about 60 us a row, 6 s of a 67k-pair BLiMP share); a list decodes them once."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset.to_list())
        self.features = dataset.features


_DECODED: "weakref.WeakKeyDictionary[Dataset, DocumentList]" = weakref.WeakKeyDictionary()


def blimp_documents(dataset: Dataset) -> DocumentList:
    """A BLiMP paradigm's pairs, decoded once (see `DocumentList`): lm-eval calls `process_docs` each
    time it reads the task's documents, so the list is kept for as long as the split is."""
    decoded = _DECODED.get(dataset)
    if decoded is None:
        decoded = _DECODED[dataset] = DocumentList(dataset)
    return decoded
