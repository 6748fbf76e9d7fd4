"""A run's config fingerprint (what a pipeline re-run compares, and what a later stage's lineage
records) changes with what the run computes, not with how it is launched, published or signed in."""

from __future__ import annotations

from ptft_hf.pipeline import config_fingerprint


def test_fingerprint_ignores_switches_publishing_and_secrets(compose_cfg):
    base = config_fingerprint(compose_cfg("trainer.max_steps=7"))
    same = [("overwrite=true",), ("verbose=true",), ("trainer.disable_tqdm=true",),
            ("hub.push=true", "hub.repo_id=me/x"), ("trainer.hub_token=hf_aaaaaaaaaaaaaaaa",)]
    for overrides in same:
        assert config_fingerprint(compose_cfg("trainer.max_steps=7", *overrides)) == base, overrides
    rotated = config_fingerprint(compose_cfg("trainer.max_steps=7", "trainer.hub_token=hf_bbbbbbbbbbbbbbbb"))
    assert rotated == base


def test_fingerprint_follows_what_the_run_computes(compose_cfg):
    base = config_fingerprint(compose_cfg("trainer.max_steps=7"))
    for overrides in [("trainer.max_steps=8",), ("seed=1",), ("strategy=lora",), ("data.max_train_samples=10",)]:
        assert config_fingerprint(compose_cfg(*overrides) if overrides[0].startswith("trainer") else
                                  compose_cfg("trainer.max_steps=7", *overrides)) != base, overrides


def test_an_option_added_later_changes_nothing_while_off(compose_cfg):
    """A stage finished before `objective.rdrop_alpha` existed keeps its fingerprint: off (0), the
    option is left out; on, it counts."""
    from omegaconf import OmegaConf

    cfg = compose_cfg("objective=classification")
    older = OmegaConf.to_container(cfg)
    del older["objective"]["rdrop_alpha"]
    assert config_fingerprint(OmegaConf.create(older)) == config_fingerprint(cfg)
    assert config_fingerprint(compose_cfg("objective=classification", "objective.rdrop_alpha=1.0")) != config_fingerprint(cfg)


def test_tokenizer_special_token_flags_count_only_when_set(compose_cfg):
    """`model.tokenizer.add_bos_token` / `add_eos_token` (null: the tokenizer's own) are left out
    while null, so stages finished before they existed keep their fingerprint."""
    from omegaconf import OmegaConf

    cfg = compose_cfg("objective=classification")
    older = OmegaConf.to_container(cfg)
    del older["model"]["tokenizer"]["add_bos_token"], older["model"]["tokenizer"]["add_eos_token"]
    assert config_fingerprint(OmegaConf.create(older)) == config_fingerprint(cfg)
    for flag in ("add_bos_token", "add_eos_token"):
        on, off = (config_fingerprint(compose_cfg("objective=classification", f"model.tokenizer.{flag}={value}"))
                   for value in ("true", "false"))
        assert len({on, off, config_fingerprint(cfg)}) == 3  # no "*_token" secret mask hides the value


def test_objective_options_count_only_when_set(compose_cfg):
    """`objective.options` (the settings of objectives added outside ptft_hf) is left out while
    empty: stages finished before it existed keep their fingerprint."""
    from omegaconf import OmegaConf

    cfg = compose_cfg("objective=clm")
    older = OmegaConf.to_container(cfg)
    assert older["objective"]["options"] == {}
    del older["objective"]["options"]
    assert config_fingerprint(OmegaConf.create(older)) == config_fingerprint(cfg)
    assert config_fingerprint(compose_cfg("objective=clm", "+objective.options.k=1")) != config_fingerprint(cfg)


def test_the_objectives_default_steps_count_only_through_trainer_max_steps(compose_cfg):
    """`objective.max_steps` (added later) only supplies trainer.max_steps: a classification stage
    finished before it existed, with its steps set, keeps its fingerprint; the steps still count."""
    from omegaconf import OmegaConf

    cfg = compose_cfg("objective=classification", "trainer.max_steps=300")
    older = OmegaConf.to_container(cfg, resolve=True)
    del older["objective"]["max_steps"]
    assert config_fingerprint(OmegaConf.create(older)) == config_fingerprint(cfg)
    assert config_fingerprint(compose_cfg("objective=classification")) != config_fingerprint(cfg)  # -1 against 300
