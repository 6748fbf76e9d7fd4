"""Several pretraining corpora mixed by token share (`data.extra_train: [{path, weight}]`).

Each corpus is packed into blocks on its own; blocks are all `block_size` long, so a share of the
blocks is the same share of the tokens. The mixture takes every corpus whole at least once and
as many blocks of each as makes the shares the weights (a corpus smaller than its share is
repeated, in a new seeded order each time; the apportioned counts differ from the weights by
less than one block). The Trainer shuffles the blocks, so the corpora interleave.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np
from datasets import Dataset, concatenate_datasets

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.sources import MIXTURE_PREFIX, load_text_splits
from ptft_hf.errors import UserError

log = logging.getLogger(__name__)


def apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Whole counts summing to `total`, each within one of `total * weight` (largest remainders)."""
    exact = {name: total * w for name, w in weights.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    by_remainder = sorted(weights, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def mix_blocks(corpora: Mapping[str, Dataset], weights: Mapping[str, float], seed: int) -> tuple[Dataset, dict[str, Any]]:
    """The blocks of `corpora` in the token shares `weights` (summing to 1), and what was realised:
    per corpus its weight, its own blocks, the blocks taken and the realised share."""
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


def add_replay(conf: PtftConfig, splits: Any, references: Mapping[str, DataConfig]) -> Any:
    """Mix `data.replay` of the training tokens from the base stage's own training data (the
    documents it trained on, never its eval ones) into this stage's: a corpus mixed by token share,
    named `replay_<data>`, counted in `data_mixture` like any other."""
    if len(references) != 1:
        raise UserError.of("data.replay", "needs the base stage's data, and this run has no base stage",
                           "set it on a pipeline stage with init_from, or mix a corpus with data.extra_train (weight)")
    (base_name, base_data), = references.items()
    name = f"replay_{base_name}"
    base_train = load_text_splits(base_data, conf.seed)["train"].select_columns(["text"])
    splits[f"{MIXTURE_PREFIX}{name}"] = base_train.cast(splits["train"].select_columns(["text"]).features)
    conf.data.extra_train = [*conf.data.extra_train, {"name": name, "weight": conf.data.replay}]
    log.info("replay: %.0f%% of the training tokens from %s's %d training documents", 100 * conf.data.replay, base_name,
             len(base_train))
    return splits
