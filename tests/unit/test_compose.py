"""Every group option and every experiment composes against the typed schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from hydra.errors import ConfigCompositionException

from ptft_hf.config.schema import PtftConfig
from ptft_hf.checks import collect_problems
from ptft_hf.paths import conf_dir

GROUPS = ["model", "data", "objective", "strategy", "trainer", "distributed", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_group_has_options(group):
    assert _options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in _options(g)]
)
def test_every_option_composes(compose_cfg, group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "text_files":
        overrides.append("data.path=corpus.txt")
    cfg = compose_cfg(*overrides)
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, PtftConfig)
    if group == "distributed":  # `# @package _global_`: the preset sets fields of several groups
        assert _missing(OmegaConf.to_container(cfg), _option_values(group, option)) == []
        assert cfg.distributed.name == option
    elif group != "experiment":  # every value the option's file sets (or the command line) is what the run gets
        expected = _option_values(group, option) | ({"path": "corpus.txt"} if "data.path=corpus.txt" in overrides else {})
        assert _missing(OmegaConf.to_container(cfg[group]), expected) == []


def _option_values(group: str, option: str) -> dict:
    values = OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{option}.yaml"))
    values.pop("defaults", None)
    return values.get(group, values) if list(values) == [group] else values  # `# @package` wrappers


def _missing(whole: dict, part: dict, prefix: str = "") -> list[str]:
    """Keys of `part` whose value `whole` does not hold (nested dicts compared key by key)."""
    missing = []
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(whole.get(key), dict):
            missing += _missing(whole[key], value, f"{prefix}{key}.")
        elif whole.get(key, object()) != value:
            missing.append(f"{prefix}{key}: {whole.get(key)!r} != {value!r}")
    return missing


def test_each_yaml_option_starts_with_a_launch_example():
    for path in conf_dir().rglob("*.yaml"):
        head = path.read_text(encoding="utf-8").splitlines()[:3]
        assert any(line.startswith("#") and ("ptft-hf" in line or "Launch" in line) for line in head), path


def test_unknown_key_fails_at_compose_time(compose_cfg):
    with pytest.raises(ConfigCompositionException):
        compose_cfg("model.n_layerz=3")


def test_trainer_passes_training_arguments_through(compose_cfg):
    cfg = compose_cfg("trainer.max_steps=7", "trainer.optim=adamw_torch")
    assert cfg.trainer.max_steps == 7 and cfg.trainer.optim == "adamw_torch"
    assert collect_problems(cfg) == []


def test_validation_reports_every_problem_at_once(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "data=text_files", f"data.path={tmp_path / 'missing.txt'}",
        "objective.block_size=1024", "+trainer.learning_rat=1e-3",
    )
    problems = collect_problems(cfg)
    assert [p.field for p in problems] == ["objective.block_size", "data.path", "trainer.learning_rat"]
    assert "did you mean learning_rate" in str(problems[2])
    assert "model.config.n_positions" in str(problems[0])


def test_conf_dir_is_the_checkout_conf():
    assert conf_dir() == Path(__file__).resolve().parents[2] / "conf"


def test_line_by_line_is_refused_outside_masked_lm(compose_cfg, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one line\n")
    problems = collect_problems(compose_cfg("data=text_files", f"data.path={corpus}", "objective=clm", "objective.line_by_line=true"))
    assert [p.field for p in problems] == ["objective.line_by_line"]
    assert "objective=clm" in str(problems[0])
    assert collect_problems(compose_cfg("model=tiny_bert", "objective=mlm", "data=text_files", f"data.path={corpus}",
                                        "objective.line_by_line=true")) == []
    short = collect_problems(compose_cfg("model=tiny_bert", "objective=mlm", "data=text_files", f"data.path={corpus}",
                                         "objective.line_by_line=true", "objective.block_size=2"))
    assert [p.field for p in short] == ["objective.block_size"] and "[CLS] and [SEP]" in str(short[0])


@pytest.mark.parametrize("value,fields", [("0", ["objective.length_megabatch"]), ("-3", ["objective.length_megabatch"]),
                                          ("1", []), ("null", [])])
def test_length_megabatch_must_hold_a_batch(compose_cfg, tmp_path, value, fields):
    train = tmp_path / "train.csv"
    train.write_text("text,category\nhello,a\n")
    problems = collect_problems(compose_cfg("objective=classification", "data=banking77", f"data.path={train}",
                                            f"data.eval_path={train}", "data.label_column=category",
                                            f"objective.length_megabatch={value}"))
    assert [p.field for p in problems] == fields


@pytest.mark.parametrize("overrides,problem", [
    (["objective=classification", "objective.rdrop_alpha=1.0"], None),
    (["objective=classification", "objective.rdrop_alpha=-1"],
     "objective.rdrop_alpha: -1.0 is negative; use 0 (off) or a KL weight such as 1.0"),
    (["objective=clm", "data=text_files", "objective.rdrop_alpha=1.0"],
     "objective.rdrop_alpha: R-Drop is for objective=classification, not objective=clm; "
     "drop objective.rdrop_alpha, or set objective=classification"),
])
def test_rdrop_alpha_is_a_non_negative_weight_for_classifiers(compose_cfg, tmp_path, overrides, problem):
    train = tmp_path / "train.csv"
    train.write_text("text,category\nhello,a\n")
    data = ([] if "data=text_files" in overrides else ["data=banking77", "data.label_column=category"])
    problems = collect_problems(compose_cfg(*overrides, *data, f"data.path={train}", f"data.eval_path={train}"))
    assert [str(p) for p in problems] == ([problem] if problem else [])


@pytest.mark.parametrize("overrides,learning_rate", [
    ([], 1e-3), (["objective=classification"], 3e-4), (["objective=classification", "trainer.learning_rate=1e-3"], 1e-3),
    (["objective=classification", "objective.learning_rate=5e-4"], 5e-4), (["objective=mlm", "model=tiny_bert"], 1e-3)])
def test_the_cpu_trainers_learning_rate_is_the_objectives_unless_set(compose_cfg, overrides, learning_rate):
    assert compose_cfg(*overrides).trainer.learning_rate == learning_rate


@pytest.mark.parametrize("overrides,max_steps", [
    ([], 300), (["objective=classification"], -1), (["objective=classification", "trainer.max_steps=300"], 300),
    (["objective=mlm", "model=tiny_bert"], 300), (["objective=classification", "trainer=gpu"], -1), (["trainer=gpu"], 2000)])
def test_classification_trains_whole_epochs_unless_the_steps_are_set(compose_cfg, overrides, max_steps):
    """`objective.max_steps` supplies trainer.max_steps: classification -1 (trainer.num_train_epochs),
    the others the trainer group's own steps."""
    assert compose_cfg(*overrides).trainer.max_steps == max_steps


@pytest.mark.parametrize("option", _options("experiment"))
def test_every_pipeline_stage_composes_and_validates(compose_cfg, option, tmp_path):
    """A stage's overrides are composed only when the pipeline starts: a bad one (a glob that
    Hydra's override grammar cannot read, a misspelt key) must fail here, not after an hour."""
    from ptft_hf.pipeline import compose_stages

    cfg = compose_cfg(f"experiment={option}")
    if "stages" not in cfg:
        pytest.skip(f"experiment={option} is a single run, not a pipeline")
    assert list(compose_stages(cfg, tmp_path / "run")) == list(cfg.stages)


def test_seed_cases_holds_out_whole_licences_for_the_legal_eval(compose_cfg, tmp_path):
    """Near-copies (gpl/lgpl/agpl, eupl-1.1/1.2, ...) on both sides of a random paragraph split
    reward memorising: every legal stage trains on 37 licences and evaluates on the 10 others."""
    from ptft_hf.data.sources import resolve_files
    from ptft_hf.pipeline import compose_stages
    from tests.conftest import shared_data

    licences = sorted(p.name for p in shared_data("licenses").glob("*.txt"))
    stages = compose_stages(compose_cfg("experiment=seed_cases"), tmp_path / "run")
    legal = {name: s for name, s in stages.items() if s.data.name == "licenses"}
    assert sorted(legal) == ["legal", "legal_control", "legal_no_replay"]
    for name, stage in legal.items():
        train = [Path(f).name for f in resolve_files("data.path", stage.data.path)]
        held_out = [Path(f).name for f in resolve_files("data.eval_path", stage.data.eval_path)]
        assert (len(train), len(held_out)) == (37, 10), name
        assert sorted(train + held_out) == licences, name
        assert held_out[:3] == ["mit-0.txt", "mit.txt", "mpl-2.0.txt"], name
    assert [legal[n].data.replay for n in ("legal", "legal_no_replay", "legal_control")] == [0.2, 0.0, 0.2]
    assert [legal[n].model.random_init for n in ("legal", "legal_no_replay", "legal_control")] == [False, False, True]
