"""Replay against forgetting: a CLM stage mixes a share of its base stage's own training data into
its training tokens (`data.replay`), counted in the mixture's accounting, never touching the base
stage's eval documents (on which forgetting is measured). In-process runs of the recipe."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ptft_hf.config.schema import DataConfig
from tests.conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.integration]

GENERAL = DataConfig(name="builtin_docs", builtin="docs", max_train_samples=300, max_eval_samples=30)


def test_replay_mixes_the_base_stages_training_documents_and_never_its_eval_ones(compose_cfg):
    from ptft_hf.data.mixture import REPLAY, MixedCorpus, Mixture
    from ptft_hf.data.sources import add_replay
    from ptft_hf.data.sources import load_text_splits

    conf = OmegaConf.to_object(compose_cfg("data=builtin_licenses", "data.replay=0.25"))
    splits = load_text_splits(conf.data, conf.seed)
    replaying = add_replay(conf, splits, {"builtin_docs": GENERAL})
    base = load_text_splits(GENERAL, conf.seed)
    replayed = replaying.mixed["replay_builtin_docs"]["text"]
    assert sorted(replayed) == sorted(base["train"]["text"]) and len(replayed) == 300
    assert not set(replayed) & set(base["eval"]["text"])
    # an entry of kind replay in the run's mixture; the config and the splits it came from are as they were
    assert replaying.mixture == Mixture("builtin_licenses", (MixedCorpus("replay_builtin_docs", 0.25, REPLAY, GENERAL),))
    assert replaying.mixture.weights == {"builtin_licenses": 0.75, "replay_builtin_docs": 0.25}
    assert conf.data.extra_train == [] and splits.mixture == Mixture("builtin_licenses") and splits.mixed == {}
    assert replaying.train is splits.train and replaying.eval is splits.eval


def test_a_stage_with_replay_trains_on_that_share_of_its_base_data(compose_cfg, tmp_path):
    from ptft_hf.recipe import run

    metrics = run(compose_cfg("data=builtin_licenses", "data.replay=0.25", "data.max_eval_samples=20", *TINY_OVERRIDES,
                              "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.save_steps=2"),
                  tmp_path / "run", references={"builtin_docs": GENERAL})
    mixture = metrics["data_mixture"]
    assert set(mixture) == {"builtin_licenses", "replay_builtin_docs"}
    assert mixture["replay_builtin_docs"]["weight"] == 0.25
    assert {name: corpus["kind"] for name, corpus in mixture.items()} == {"builtin_licenses": "main", "replay_builtin_docs": "replay"}
    for corpus in mixture.values():
        assert abs(corpus["share"] - corpus["weight"]) < 0.01
    assert "eval_builtin_docs_perplexity" in metrics  # forgetting is still measured on the base's eval data


@pytest.mark.parametrize("overrides,problem", [
    (["data.replay=1.5"], "data.replay: is 1.5, not a share of the training tokens"),
    (["objective=mlm", "model=tiny_bert", "data.replay=0.2"], "data.replay: mixes causal-LM blocks, not objective=mlm"),
    (["data.replay=0.2", "data.streaming=true", "trainer.max_steps=5"], "data.replay: mixes data packed on disk, not a stream"),
])
def test_replay_settings_that_cannot_work_are_refused_in_one_line(compose_cfg, overrides, problem):
    from ptft_hf.checks import collect_problems

    assert problem in [f"{p.field}: {p.what}" for p in collect_problems(compose_cfg("data=builtin_licenses", *overrides))]


def test_replay_outside_a_pipeline_stage_says_where_it_belongs(compose_cfg, tmp_path):
    from ptft_hf.errors import UserError
    from ptft_hf.recipe import run

    with pytest.raises(UserError) as err:
        run(compose_cfg("data=builtin_licenses", "data.replay=0.2", *TINY_OVERRIDES), tmp_path / "run")
    assert str(err.value.problems[0]).startswith("data.replay: needs the base stage's data, and this run has no base stage")
