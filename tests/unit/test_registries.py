"""The registries answer what the rest of the code used to ask by name: exact traits of every
built-in objective and strategy, typed settings, and the checks that ask them."""

from __future__ import annotations

import dataclasses

import pytest

from ptft_hf.checks import collect_problems
from ptft_hf.errors import UserError
from ptft_hf.objectives import get_objective, objective_names
from ptft_hf.strategies import strategy_class, strategy_names

TRAITS = ("auto_class", "task_type", "pipeline_tag", "language_modelling", "generates", "classifies", "merges", "reads_chat",
          "mixes_blocks")


def test_objective_traits_are_what_the_code_used_to_spell_out_by_name():
    table = {name: tuple(getattr(get_objective(name), t) for t in TRAITS) for name in objective_names()}
    assert table == {
        "clm": ("AutoModelForCausalLM", "CAUSAL_LM", "text-generation", True, True, False, True, False, True),
        "mlm": ("AutoModelForMaskedLM", None, "fill-mask", True, False, False, True, False, False),
        "classification": ("AutoModelForSequenceClassification", "SEQ_CLS", "text-classification", False, False, True, True,
                           False, False),
        "sft": ("AutoModelForCausalLM", "CAUSAL_LM", "text-generation", False, True, False, True, True, False),
    }


def test_strategy_traits():
    table = {name: (strategy_class(name).display_name, strategy_class(name).saves_adapter_only, strategy_class(name).quantizes)
             for name in strategy_names()}
    assert table == {"full": ("full fine-tuning", False, False), "lora": ("LoRA", True, False), "dora": ("DoRA", True, False),
                     "qlora": ("QLoRA", True, True)}


def test_settings_are_a_typed_view_of_the_objective_group(compose_cfg):
    settings = get_objective("mlm").read_settings(compose_cfg("objective=mlm", "objective.mlm_probability=0.3").objective)
    assert dataclasses.is_dataclass(settings) and settings.mlm_probability == 0.3
    assert [f.name for f in dataclasses.fields(settings)] == [
        "name", "learning_rate", "max_steps", "num_proc", "block_size", "add_eos", "mlm_probability", "whole_word_mask",
        "eval_mask_seed", "predict_masked_only", "line_by_line", "length_megabatch"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.mlm_probability = 0.5


def test_an_unknown_name_is_one_line_naming_the_choices():
    with pytest.raises(UserError) as err:
        get_objective("nextword")
    assert str(err.value.problems[0]) == "objective.name: 'nextword' is not supported; use one of: clm, mlm, classification, sft"
    with pytest.raises(UserError) as err:
        strategy_class("ia3")
    assert str(err.value.problems[0]) == "strategy.name: 'ia3' is not supported; use one of: full, lora, dora, qlora"


def _lines(problems) -> list[str]:
    return [str(p) for p in problems]


def test_settings_of_another_objective_are_refused_with_their_own_words(compose_cfg):
    lines = _lines(collect_problems(compose_cfg("objective=clm", "objective.rdrop_alpha=1.0", "objective.line_by_line=true")))
    assert "objective.rdrop_alpha: R-Drop is for objective=classification, not objective=clm; drop objective.rdrop_alpha, " \
           "or set objective=classification" in lines
    assert "objective.line_by_line: only masked-LM rows can be line by line, not objective=clm; drop objective.line_by_line " \
           "(clm packs blocks; sft has objective.packing)" in lines
    negative = _lines(collect_problems(compose_cfg("objective=clm", "objective.rdrop_alpha=-1.0", "objective.mlm_probability=2")))
    assert [line.split(":")[0] for line in negative] == ["objective.rdrop_alpha", "objective.mlm_probability"]
    assert negative[0] == "objective.rdrop_alpha: -1.0 is negative; use 0 (off) or a KL weight such as 1.0"


def test_an_unknown_objective_still_gets_every_other_problem_reported(compose_cfg, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)  # no token anywhere (HF_HOME is the session's own)
    lines = _lines(collect_problems(compose_cfg("objective.name=nextword", "hub.push=true", "hub.repo_id=bad id",
                                                "trainer.learning_rate=-1")))
    assert [line.split(":")[0] for line in lines] == ["objective.name", "trainer.learning_rate", "hub.repo_id", "hub.push"]
