"""The hub section: problems reported before training, and a pipeline's hub.* reaching its last stage only."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from ptft_hf.checks import collect_problems
from ptft_hf.errors import UserError
from ptft_hf.pipeline import compose_stages, shared_overrides


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_planted_for_validation")


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))


def _hub_lines(cfg) -> list[str]:
    return [str(p) for p in collect_problems(cfg) if p.field.startswith("hub.")]


def test_defaults_push_nothing_and_are_private(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.hub.push, cfg.hub.dry_run, cfg.hub.private, cfg.hub.repo_id) == (False, False, True, None)
    assert _hub_lines(cfg) == []


def test_push_without_repo_id_is_one_line(compose_cfg, token):
    assert _hub_lines(compose_cfg("hub.push=true")) == ["hub.repo_id: missing; set hub.repo_id=user/name"]


@pytest.mark.parametrize("repo_id,expected", [
    ("me/bad--name", "hub.repo_id: 'me/bad--name' is not a Hub repo id ("),
    ("a/b/c", "hub.repo_id: 'a/b/c' is not a Hub repo id ("),
    ("nonamespace", "hub.repo_id: 'nonamespace' has no namespace; use hub.repo_id=user/name"),
])
def test_malformed_repo_id(compose_cfg, token, repo_id, expected):
    lines = _hub_lines(compose_cfg("hub.push=true", f"hub.repo_id={repo_id}"))
    assert len(lines) == 1 and lines[0].startswith(expected)


def test_push_without_a_token_is_refused_before_training(compose_cfg, no_token):
    assert _hub_lines(compose_cfg("hub.push=true", "hub.repo_id=me/model")) == [
        "hub.push: no Hugging Face token found; set HF_TOKEN or run `hf auth login`, or stage only with a dry run"]
    assert _hub_lines(compose_cfg("hub.dry_run=true")) == []  # a dry run needs neither token nor repo id


def test_merging_needs_an_adapter(compose_cfg, token):
    lines = _hub_lines(compose_cfg("hub.push=true", "hub.repo_id=me/model", "hub.merged=true", "strategy=full"))
    assert lines == ["hub.merged: strategy=full saves a full model, there is no adapter to merge; drop hub.merged"]
    assert _hub_lines(compose_cfg("hub.push=true", "hub.repo_id=me/model", "hub.merged=true", "strategy=lora",
                                  "model=gpt2")) == []  # a pretrained base: tiny_gpt2's random one is refused


def test_pipeline_hub_settings_go_to_the_last_stage_only(compose_cfg, tmp_path):
    assert shared_overrides(["hub.dry_run=true", "hub.repo_id=me/x", "trainer.max_steps=3"]) == ["trainer.max_steps=3"]
    cfg = compose_cfg("experiment=quickstart", "hub.dry_run=true", "hub.repo_id=me/x")
    stages = compose_stages(cfg, tmp_path / "run")
    assert (stages["finetune"].hub.dry_run, stages["finetune"].hub.repo_id) == (True, "me/x")
    assert (stages["pretrain"].hub.dry_run, stages["pretrain"].hub.repo_id) == (False, None)


def test_pipeline_reports_hub_problems_before_any_stage_runs(compose_cfg, tmp_path, token):
    cfg = compose_cfg("experiment=quickstart", "hub.push=true")
    with pytest.raises(UserError) as err:
        compose_stages(cfg, tmp_path / "run")
    assert [str(p) for p in err.value.problems] == ["stages.finetune: hub.repo_id: missing; set hub.repo_id=user/name"]
    assert not (tmp_path / "run").exists()
