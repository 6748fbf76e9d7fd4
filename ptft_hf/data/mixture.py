"""Corpora mixed by token share, and replay, as one typed concept.

A run's `Mixture` is built once from its data settings (`Mixture.from_config(data)`): the main
corpus and the `MixedCorpus` entries mixed into it, each with its share of the training tokens
(`weight`) and its kind: `extra` (a weighted `data.extra_train` entry) or `replay` (a pipeline
stage's `data.replay`: its base stage's own training documents, added by `add_replay`). The main
corpus takes the rest, `1 - sum(weights)`; `Mixture.weights` is the one place that computes it.
`data.extra_train` entries without a weight (`repeat`) are no part of a mixture: their documents
are concatenated to the main corpus' (`ExtraCorpus`, the typed entry, covers both).

Each corpus is packed into blocks on its own; blocks are all `block_size` long, so a share of the
blocks is the same share of the tokens. The mixture takes every corpus whole at least once and
as many blocks of each as makes the shares the weights (a corpus smaller than its share is
repeated, in a new seeded order each time; the apportioned counts differ from the weights by
less than one block). The Trainer shuffles the blocks, so the corpora interleave. A stream mixes
block by block instead (`ptft_hf.data.streaming.MixedStream`).

`metrics.json`'s `data_mixture` names each corpus with its kind (`main`, `extra`, `replay`);
`replay_share` reads it, and reads run folders written before the kinds by the `replay_` name.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from datasets import Dataset, concatenate_datasets

from ptft_hf.config.schema import DataConfig


log = logging.getLogger(__name__)

MAIN, EXTRA, REPLAY = "main", "extra", "replay"  # the kinds of a mixture's corpora
REPLAY_PREFIX = "replay_"  # a replayed corpus is named replay_<base stage's data>


@dataclass(frozen=True)
class ExtraCorpus:
    """One `data.extra_train` entry, typed (the YAML keeps its plain dict: config fingerprints
    hash that shape). With a `weight` it is mixed by token share; without, its documents are
    concatenated to the main corpus' `repeat` times."""

    index: int  # its place in data.extra_train, for the field names in messages
    path: str
    name: str
    text_column: str = "text"
    format: str | None = None
    sample_by: str = "line"
    repeat: int = 1
    weight: float | None = None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], index: int, sample_by: str = "line") -> "ExtraCorpus":
        """The entry as validated by `ptft_hf.data.checks` (`sample_by`: the main data's, its default)."""
        weight = entry.get("weight")
        return cls(index=index, path=str(entry["path"]), name=mixture_name(entry, index),
                   text_column=entry.get("text_column", "text"), format=entry.get("format"),
                   sample_by=entry.get("sample_by", sample_by), repeat=int(entry.get("repeat", 1)),
                   weight=None if weight is None else float(weight))

    @property
    def field(self) -> str:
        return f"data.extra_train[{self.index}]"

    def data_config(self) -> DataConfig:
        """How its files are read (format, sample_by), as the loaders take it."""
        return DataConfig(path=self.path, format=self.format, sample_by=self.sample_by)


def mixture_name(extra: Mapping[str, Any], index: int) -> str:
    """An extra corpus' name: its `name`, else its file's stem."""
    return str(extra.get("name") or Path(str(extra["path"])).stem or f"extra{index}")


def extra_corpora(data: DataConfig) -> tuple[ExtraCorpus, ...]:
    """`data.extra_train`, typed, in its order."""
    return tuple(ExtraCorpus.from_entry(entry, i, data.sample_by) for i, entry in enumerate(data.extra_train))


@dataclass(frozen=True)
class MixedCorpus:
    """A corpus mixed into the main one by token share: `weight` of the training tokens.
    `source`: the `data.extra_train` entry (kind `extra`) or the base stage's data (kind `replay`)."""

    name: str
    weight: float
    kind: str  # EXTRA or REPLAY
    source: ExtraCorpus | DataConfig


@dataclass(frozen=True)
class Mixture:
    """The main corpus (`main`, data.name) and the corpora mixed into it, in the order they mix
    (data.extra_train's, then a replay). No entries: the main corpus alone, no mixing."""

    main: str
    entries: tuple[MixedCorpus, ...] = ()

    @classmethod
    def from_config(cls, data: DataConfig) -> "Mixture":
        """The weighted `data.extra_train` entries (kind `extra`); replay is added by `with_replay`."""
        return cls(data.name, tuple(MixedCorpus(extra.name, extra.weight, EXTRA, extra)
                                    for extra in extra_corpora(data) if extra.weight is not None))

    def __bool__(self) -> bool:
        """Whether anything is mixed into the main corpus."""
        return bool(self.entries)

    @property
    def main_weight(self) -> float:
        """The main corpus' share: what the mixed-in corpora leave."""
        return 1.0 - sum(entry.weight for entry in self.entries)

    @property
    def weights(self) -> dict[str, float]:
        """Every corpus' share of the training tokens, the main corpus first (they sum to 1)."""
        return {self.main: self.main_weight, **{entry.name: entry.weight for entry in self.entries}}

    @property
    def kinds(self) -> dict[str, str]:
        return {self.main: MAIN, **{entry.name: entry.kind for entry in self.entries}}

    def with_replay(self, base_name: str, base_data: DataConfig, share: float) -> "Mixture":
        """This mixture with `share` of the training tokens replayed from `base_data` (kind `replay`)."""
        return dataclasses.replace(self, entries=(*self.entries, MixedCorpus(f"{REPLAY_PREFIX}{base_name}", float(share),
                                                                             REPLAY, base_data)))

    def described(self, realised: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """`metrics.json`'s `data_mixture`: what was realised per corpus, with its kind."""
        kinds = self.kinds
        return {name: {**part, "kind": kinds[name]} for name, part in realised.items()}


def replay_share(data_mixture: Mapping[str, Mapping[str, Any]] | None) -> float:
    """The share of a run's training tokens replayed from its base stage's data (0: none), from
    `metrics.json`'s `data_mixture`: the entries of kind `replay`; in metrics written before the
    kinds were recorded, the entries named `replay_<data>`."""
    return sum(part.get("weight", 0.0) for name, part in (data_mixture or {}).items()
               if part.get("kind", REPLAY if name.startswith(REPLAY_PREFIX) else None) == REPLAY)


def apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Whole counts summing to `total`, each within one of `total * weight` (largest remainders)."""
    exact = {name: total * w for name, w in weights.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    by_remainder = sorted(weights, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def mix_blocks(corpora: Mapping[str, Dataset], weights: Mapping[str, float], seed: int) -> tuple[Dataset, dict[str, Any]]:
    """The blocks of `corpora` in the token shares `weights` (summing to 1; a `Mixture.weights`),
    and what was realised: per corpus its weight, its own blocks, the blocks taken and the realised share."""
    sizes = {name: len(ds) for name, ds in corpora.items()}
    total = max(math.ceil(sizes[name] / weights[name]) for name in corpora)
    counts = apportion(total, weights)
    rng = np.random.default_rng(seed)
    parts = []
    for name, ds in corpora.items():
        passes = math.ceil(counts[name] / sizes[name])
        order = np.concatenate([rng.permutation(sizes[name]) for _ in range(passes)])[: counts[name]]
        parts.append(ds.select(order))
    report = {name: {"weight": float(weights[name]), "corpus_blocks": sizes[name], "blocks": counts[name],
                     "share": round(counts[name] / total, 6)} for name in corpora}
    return concatenate_datasets(parts), report
