"""Corpora mixed by token share: the realised shares are the weights (within a block), every
corpus is used whole, a small one is repeated."""

from __future__ import annotations

import dataclasses

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


# --- the typed mixture: built once from the data settings ---------------------------------------

EXTRA_TRAIN = [{"path": "corpora/medical", "weight": 0.15, "name": "med"},  # weighted, named
               {"path": "wiki/valid.txt", "repeat": 2},  # concatenated documents, no part of the mixture
               {"path": "banking77/train.csv", "weight": 0.05, "text_column": "text", "sample_by": "document"}]


def _old_weights(extra_train: list[dict]) -> dict[str, float]:
    """The comprehension data/tokenizer_texts.py and objectives/clm.py each wrote before the Mixture."""
    from ptft_hf.data.mixture import mixture_name

    weights = {mixture_name(e, i): float(e["weight"]) for i, e in enumerate(extra_train) if e.get("weight") is not None}
    return {"licenses": 1.0 - sum(weights.values()), **weights}


def test_the_mixture_weights_are_the_old_comprehensions_main_share_included_in_mixing_order():
    from ptft_hf.config.schema import DataConfig
    from ptft_hf.data.mixture import EXTRA, ExtraCorpus, MixedCorpus, Mixture

    mixture = Mixture.from_config(DataConfig(name="licenses", extra_train=EXTRA_TRAIN, sample_by="paragraph"))
    assert list(mixture.weights.items()) == list(_old_weights(EXTRA_TRAIN).items()) == [
        ("licenses", 1.0 - (0.15 + 0.05)), ("med", 0.15), ("train", 0.05)]
    assert mixture.main_weight == 1.0 - (0.15 + 0.05) and sum(mixture.weights.values()) == pytest.approx(1.0, abs=1e-15)
    assert mixture.kinds == {"licenses": "main", "med": "extra", "train": "extra"}
    assert mixture.entries == (
        MixedCorpus("med", 0.15, EXTRA, ExtraCorpus(0, "corpora/medical", "med", "text", None, "paragraph", 1, 0.15)),
        MixedCorpus("train", 0.05, EXTRA, ExtraCorpus(2, "banking77/train.csv", "train", "text", None, "document", 1, 0.05)))
    assert mixture and not Mixture.from_config(DataConfig(name="licenses", extra_train=[EXTRA_TRAIN[1]]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        mixture.main = "other"  # type: ignore[misc]


def test_extra_train_entries_are_typed_with_the_yaml_defaults():
    from ptft_hf.config.schema import DataConfig
    from ptft_hf.data.mixture import ExtraCorpus, extra_corpora

    extras = extra_corpora(DataConfig(extra_train=EXTRA_TRAIN))
    assert extras[1] == ExtraCorpus(index=1, path="wiki/valid.txt", name="valid", text_column="text", format=None,
                                    sample_by="line", repeat=2, weight=None)
    assert [e.field for e in extras] == ["data.extra_train[0]", "data.extra_train[1]", "data.extra_train[2]"]
    assert extras[2].data_config() == DataConfig(path="banking77/train.csv", format=None, sample_by="document")


def test_replay_is_an_entry_of_kind_replay_and_leaves_the_mixture_it_came_from_alone():
    from ptft_hf.config.schema import DataConfig
    from ptft_hf.data.mixture import REPLAY, MixedCorpus, Mixture

    general = DataConfig(name="wikitext2", builtin="docs")
    mixture = Mixture.from_config(DataConfig(name="licenses", extra_train=EXTRA_TRAIN))
    replaying = mixture.with_replay("wikitext2", general, 0.2)
    assert replaying.entries[-1] == MixedCorpus("replay_wikitext2", 0.2, REPLAY, general)
    assert replaying.entries[:-1] == mixture.entries and len(mixture.entries) == 2
    # the weights the old code gave once add_replay had appended {name, weight} to data.extra_train
    assert list(replaying.weights.items()) == list(_old_weights([*EXTRA_TRAIN, {"name": "replay_wikitext2", "weight": 0.2}]).items())
    assert replaying.kinds["replay_wikitext2"] == "replay"
    assert replaying.described({"licenses": {"blocks": 6}, "replay_wikitext2": {"blocks": 2}}) == {
        "licenses": {"blocks": 6, "kind": "main"}, "replay_wikitext2": {"blocks": 2, "kind": "replay"}}


def test_replay_share_asks_the_kind_and_reads_metrics_written_before_the_kinds():
    from ptft_hf.data.mixture import replay_share

    # data_mixture as the previous version wrote it (a replaying stage, no kinds): the name tells
    before_kinds = {"builtin_licenses": {"blocks": 516076, "corpus_blocks": 1214, "share": 0.6, "tokens_per_pass": 38860,
                                         "weight": 0.6},
                    "med": {"blocks": 129019, "corpus_blocks": 129019, "share": 0.15, "weight": 0.15},
                    "replay_builtin_docs": {"blocks": 172026, "corpus_blocks": 1504, "share": 0.200001,
                                            "tokens_per_pass": 48129, "weight": 0.2}}
    assert replay_share(before_kinds) == 0.2
    assert replay_share({"licenses": {"weight": 1.0}}) == 0.0 and replay_share(None) == 0.0 and replay_share({}) == 0.0
    # with kinds, the kind decides: a corpus someone named replay_notes is an extra one
    with_kinds = {"licenses": {"weight": 0.6, "kind": "main"}, "replay_notes": {"weight": 0.1, "kind": "extra"},
                  "replay_wikitext2": {"weight": 0.3, "kind": "replay"}}
    assert replay_share(with_kinds) == 0.3


def test_text_splits_are_train_and_eval_with_the_mixed_texts_beside_them():
    from ptft_hf.config.schema import DataConfig
    from ptft_hf.data.mixture import Mixture
    from ptft_hf.data.sources import TextSplits

    train, eval_, med, bank = (Dataset.from_dict({"text": [name]}) for name in ("train", "eval", "med", "bank"))
    splits = TextSplits(train, eval_, Mixture.from_config(DataConfig(name="licenses", extra_train=EXTRA_TRAIN)),
                        {"train": bank, "med": med})
    assert list(splits) == ["train", "eval"] and splits["train"] is train and splits["eval"] is eval_
    assert dict(splits.items()) == {"train": train, "eval": eval_}  # a corpus named train is no split
    with pytest.raises(KeyError):
        splits["mixture:med"]  # noqa: B018  (the prefixed split names are gone)
    assert list(splits.mixed_texts().items()) == [("licenses", train), ("med", med), ("train", bank)]


def test_the_tokenizer_reads_the_runs_mixture_not_the_config(compose_cfg):
    """tokenizer_texts takes the shares from `splits.mixture` (a replay is in it, the config's
    extra_train is empty): the weights are computed once, where the mixture is built."""
    from omegaconf import OmegaConf

    from ptft_hf.config.schema import DataConfig
    from ptft_hf.data.mixture import Mixture
    from ptft_hf.data.sources import TextSplits
    from ptft_hf.data.tokenizer_texts import tokenizer_texts

    conf = OmegaConf.to_object(compose_cfg("model.tokenizer.max_documents=100", "data.replay=0.3"))
    assert conf.data.extra_train == []
    mixture = Mixture(conf.data.name).with_replay("general", DataConfig(name="general"), 0.3)
    splits = TextSplits(Dataset.from_dict({"text": [f"own {i}" for i in range(500)]}), Dataset.from_dict({"text": ["e"]}),
                        mixture, {"replay_general": Dataset.from_dict({"text": [f"base {i}" for i in range(500)]})})
    texts = list(tokenizer_texts(splits, conf))
    assert [t.split()[0] for t in texts] == ["own"] * 70 + ["base"] * 30


def test_the_checked_extra_train_keys_are_the_typed_entrys_fields():
    from ptft_hf.data.checks import EXTRA_TRAIN_KEYS
    from ptft_hf.data.mixture import ExtraCorpus

    assert set(EXTRA_TRAIN_KEYS) == {f.name for f in dataclasses.fields(ExtraCorpus)} - {"index"}
