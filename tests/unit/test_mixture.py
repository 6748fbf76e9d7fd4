"""Corpora mixed by token share: the realised shares are the weights (within a block), every
corpus is used whole, a small one is repeated."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from ptft_hf.data.mixture import apportion, mix_blocks
from ptft_hf.data.packing import block_array, pack_blocks


def _blocks(first_id: int, n_blocks: int) -> Dataset:
    """n_blocks blocks of 4 tokens whose ids start at first_id (each block tells its corpus)."""
    ids = [[first_id + i] * 4 for i in range(n_blocks)]
    return pack_blocks(Dataset.from_dict({"input_ids": ids}), block_size=4)[0]


def test_apportion_sums_to_the_total_and_stays_within_one():
    counts = apportion(1001, {"a": 0.9, "b": 0.07, "c": 0.03})
    assert sum(counts.values()) == 1001
    assert all(abs(counts[k] - 1001 * w) < 1 for k, w in {"a": 0.9, "b": 0.07, "c": 0.03}.items())


@pytest.mark.parametrize("weights", [{"general": 0.9, "legal": 0.1}, {"general": 0.5, "legal": 0.5}, {"general": 0.7, "legal": 0.3}])
def test_the_mixture_realises_the_weights_by_tokens(weights):
    general, legal = _blocks(0, 1000), _blocks(100_000, 37)
    mixed, report = mix_blocks({"general": general, "legal": legal}, weights, seed=3)
    ids = block_array(mixed)[:, 0]
    taken = {"general": int((ids < 100_000).sum()), "legal": int((ids >= 100_000).sum())}
    total = len(mixed)
    for name, weight in weights.items():
        assert taken[name] == report[name]["blocks"]
        assert abs(taken[name] / total - weight) < 0.01  # within 1 percentage point
        assert report[name]["share"] == pytest.approx(taken[name] / total, abs=1e-6)  # rounded to 6 places
    assert set(ids[ids < 100_000]) == set(range(1000))  # the large corpus whole
    assert set(ids[ids >= 100_000]) == set(range(100_000, 100_037))  # the small one whole, repeated
    again, _ = mix_blocks({"general": general, "legal": legal}, weights, seed=3)
    assert np.array_equal(block_array(again), block_array(mixed))  # the seed fixes the draw
