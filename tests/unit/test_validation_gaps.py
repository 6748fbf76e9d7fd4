"""Issue 15: what is knowable from the config is refused before any work, and tokenizer training
is reproducible with parallelism on.

1. trainer.* values that the optimizer, the data loader or TrainingArguments refuse;
2. publishing an adapter whose base has random weights that are never saved;
3. byte-level BPE and WordPiece training give the same tokenizer twice.
"""

from __future__ import annotations

import json

import pytest

from ptft_hf.config.schema import HubConfig
from ptft_hf.checks import collect_problems, validate
from ptft_hf.hub.checks import UNSAVED_BASE_FIX
from ptft_hf.errors import Problem, UserError


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_planted_for_validation")


@pytest.fixture
def no_work(monkeypatch):
    """Loading data or a tokenizer fails the test loudly: a run must stop at validation.
    (Project code, not the library under test, is replaced: the sentinel only detects.)"""
    import ptft_hf.recipe as recipe

    def reached(*args, **kwargs):
        raise AssertionError("the run went past validation into data/tokenizer work")

    monkeypatch.setattr(recipe, "load_text_splits", reached)
    monkeypatch.setattr(recipe, "load_tokenizer", reached)


def _refused(cfg) -> list[Problem]:
    with pytest.raises(UserError) as err:
        validate(cfg)
    return err.value.problems


# --- 1. trainer values -------------------------------------------------------------------------


def test_negative_learning_rate_stops_the_run_before_any_work(compose_cfg, tmp_path, no_work):
    from ptft_hf.recipe import run

    with pytest.raises(UserError) as err:
        run(compose_cfg("trainer.learning_rate=-1"), tmp_path / "run")
    assert err.value.problems == [Problem("trainer.learning_rate", "-1 is negative, which the optimizer refuses",
                                          "set a positive value such as 3e-4")]
    assert str(err.value) == ("trainer.learning_rate: -1 is negative, which the optimizer refuses; "
                              "set a positive value such as 3e-4")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,problem", [
    ("trainer.learning_rate=-0.001", Problem("trainer.learning_rate", "-0.001 is negative, which the optimizer refuses",
                                             "set a positive value such as 3e-4")),
    ("trainer.learning_rate=abc", Problem("trainer.learning_rate", "'abc' is not a number", "set a positive value such as 3e-4")),
    ("trainer.learning_rate=nan", Problem("trainer.learning_rate", "nan is not a number", "set a positive value such as 3e-4")),
    ("trainer.weight_decay=-0.1", Problem("trainer.weight_decay", "-0.1 is negative, which the optimizer refuses",
                                          "use 0 (no decay) or a small positive value such as 0.01")),
    ("trainer.adam_beta1=1.0", Problem("trainer.adam_beta1", "1.0 is outside [0, 1), which the optimizer refuses",
                                       "use a value such as 0.9")),
    ("trainer.adam_beta2=-0.1", Problem("trainer.adam_beta2", "-0.1 is outside [0, 1), which the optimizer refuses",
                                        "use a value such as 0.999")),
    ("trainer.adam_epsilon=-1e-8", Problem("trainer.adam_epsilon", "-1e-08 is negative, which the optimizer refuses",
                                           "use a small positive value such as 1e-8")),
    ("trainer.max_grad_norm=-1", Problem("trainer.max_grad_norm", "-1 is negative, which is no gradient norm (the Trainer "
                                         "would skip clipping without saying so)",
                                         "use a positive norm such as 1.0, or 0 to turn clipping off")),
    ("trainer.warmup_steps=-5", Problem("trainer.warmup_steps", "-5 is negative, which TrainingArguments refuses",
                                        "use 0 (no warmup), a number of steps, or a fraction of the steps below 1 such as 0.03")),
    ("trainer.per_device_train_batch_size=0", Problem("trainer.per_device_train_batch_size",
                                                      "0 is not a positive whole number, which the data loader refuses",
                                                      "use 1 or more, such as 8")),
    ("trainer.per_device_eval_batch_size=2.5", Problem("trainer.per_device_eval_batch_size",
                                                       "2.5 is not a positive whole number, which the data loader refuses",
                                                       "use 1 or more, such as 8")),
    ("trainer.gradient_accumulation_steps=0", Problem("trainer.gradient_accumulation_steps",
                                                      "0 is not a positive whole number of batches per optimiser step",
                                                      "use 1 (no accumulation) or more")),
])
def test_values_the_optimizer_or_data_loader_refuse(compose_cfg, override, problem):
    assert _refused(compose_cfg(override)) == [problem]


def test_limits_themselves_are_accepted(compose_cfg):
    """torch accepts lr=0, beta=0, eps=0, no decay; 0 turns clipping and warmup off."""
    assert collect_problems(compose_cfg("trainer.learning_rate=0", "trainer.adam_beta1=0", "trainer.adam_beta2=0.999999",
                                        "trainer.adam_epsilon=0", "trainer.weight_decay=0", "trainer.max_grad_norm=0",
                                        "trainer.warmup_steps=0", "trainer.per_device_train_batch_size=1",
                                        "trainer.gradient_accumulation_steps=1")) == []


def test_one_problem_per_field_all_at_once(compose_cfg):
    """warmup_steps<0 is refused by TrainingArguments too: reported once, with the other fields."""
    problems = _refused(compose_cfg("trainer.learning_rate=-1", "trainer.warmup_steps=-5", "trainer.eval_strategy=sometimes"))
    assert [p.field for p in problems] == ["trainer.learning_rate", "trainer.warmup_steps", "trainer.eval_strategy"]
    assert problems[1].what == "-5 is negative, which TrainingArguments refuses"


def test_what_training_arguments_refuses_names_the_field(compose_cfg):
    assert _refused(compose_cfg("trainer.eval_strategy=sometimes")) == [Problem(
        "trainer.eval_strategy",
        "transformers.TrainingArguments refuses eval_strategy=sometimes (sometimes is not a valid IntervalStrategy, "
        "please select one of ['no', 'steps', 'epoch'])",
        "change or drop trainer.eval_strategy")]
    assert _refused(compose_cfg("trainer.dataloader_prefetch_factor=2")) == [Problem(
        "trainer.dataloader_prefetch_factor",
        "transformers.TrainingArguments refuses dataloader_prefetch_factor=2 (--dataloader_prefetch_factor can only be "
        "set when data is loaded in a different process, i.e. when --dataloader_num_workers > 0.)",
        "change or drop trainer.dataloader_prefetch_factor")]


def test_a_refused_combination_is_one_problem_on_its_fields(compose_cfg):
    """fp16 with bf16: both fields in one problem; use_cpu (also set) is not blamed."""
    assert _refused(compose_cfg("trainer.fp16=true", "trainer.bf16=true")) == [Problem(
        "trainer.bf16, trainer.fp16",
        "transformers.TrainingArguments refuses bf16=true, fp16=true (At most one of fp16 and bf16 can be True, but not both)",
        "change or drop trainer.bf16 or trainer.fp16")]


def test_several_refusals_of_training_arguments_are_all_reported(compose_cfg):
    problems = _refused(compose_cfg("trainer.logging_steps=2.5", "trainer.lr_scheduler_type=warm"))
    assert [p.field for p in problems] == ["trainer.lr_scheduler_type", "trainer.logging_steps"]
    assert problems[1].what == ("transformers.TrainingArguments refuses logging_steps=2.5 "
                                "(--logging_steps must be an integer if bigger than 1: 2.5)")


def test_the_run_builds_its_training_arguments_like_validation(compose_cfg, tmp_path):
    """recipe._training_arguments goes through the same builder: set fields and the objective's needs."""
    from omegaconf import OmegaConf

    from ptft_hf.training.build import training_arguments as _training_arguments

    conf = OmegaConf.to_object(compose_cfg("trainer.learning_rate=0.25", "trainer.resume_from_checkpoint=latest"))
    args = _training_arguments(conf, tmp_path / "run", {"train_sampling_strategy": "group_by_length"})
    assert (args.learning_rate, args.seed, args.output_dir, args.train_sampling_strategy) == (
        0.25, 42, str(tmp_path / "run" / "checkpoints"), "group_by_length")
    assert args.resume_from_checkpoint is None and not (tmp_path / "run").exists()


# --- 2. an adapter on a base with random weights cannot be published ------------------------------


def _random_base(field: str, model: str = "tiny_gpt2", how: str = "is built from a config") -> Problem:
    return Problem(field, f"the adapter of strategy=lora would sit on a base with random weights that is never saved "
                          f"(model={model} {how})", "publish adapters of runs that start from a saved model (model.name_or_path)")


def test_push_of_an_adapter_on_a_random_base_stops_the_run_before_any_work(compose_cfg, tmp_path, token, no_work):
    from ptft_hf.recipe import run

    with pytest.raises(UserError) as err:
        run(compose_cfg("model=tiny_gpt2", "strategy=lora", "hub.push=true", "hub.repo_id=me/model"), tmp_path / "run")
    assert err.value.problems == [_random_base("hub.push")]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,problem", [
    (["strategy=lora", "hub.dry_run=true"], _random_base("hub.dry_run")),
    (["strategy=lora", "hub.push=true", "hub.dry_run=true", "hub.repo_id=me/model"], _random_base("hub.dry_run")),
    (["model=gpt2", "model.random_init=true", "strategy=lora", "hub.push=true", "hub.repo_id=me/model"],
     _random_base("hub.push", "gpt2", "has model.random_init=true")),
])
def test_adapter_on_random_base_is_refused(compose_cfg, token, overrides, problem, hub_reachable):
    assert _refused(compose_cfg(*overrides)) == [problem]


@pytest.mark.parametrize("overrides", [
    ["model=gpt2", "strategy=lora", "hub.push=true", "hub.repo_id=me/model"],  # pretrained base
    ["model=tiny_gpt2", "strategy=full", "hub.push=true", "hub.repo_id=me/model"],  # full weights are published
    ["model=tiny_gpt2", "strategy=lora"],  # nothing is published
])
def test_publishable_runs_are_not_refused(compose_cfg, token, overrides, hub_reachable):
    assert collect_problems(compose_cfg(*overrides)) == []


def test_staging_refuses_with_the_same_fix(compose_cfg, tmp_path):
    """The later refusal (ptft-hf-push of such a run) and validation give the same fix."""
    from omegaconf import OmegaConf

    from ptft_hf.hub.stage import stage_run

    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "adapter_config.json").write_text("{}")
    (run_dir / "metrics.json").write_text("{}")
    OmegaConf.save(compose_cfg("strategy=lora"), run_dir / "config.yaml")
    with pytest.raises(UserError) as err:
        stage_run(run_dir, HubConfig(dry_run=True))
    [problem] = err.value.problems
    assert (problem.field, problem.fix) == ("run_dir", UNSAVED_BASE_FIX)
    assert not (run_dir / "hub").exists()


def test_pipeline_lora_stage_on_the_pretrain_stage_is_not_refused(compose_cfg, tmp_path, token):
    """quickstart: the finetune stage's base is the pretrain stage's saved model/."""
    from ptft_hf.pipeline import compose_stages

    cfg = compose_cfg("experiment=quickstart", "hub.push=true", "hub.repo_id=me/legal")
    stages = compose_stages(cfg, tmp_path / "run")
    finetune = stages["finetune"]
    assert (finetune.strategy.name, finetune.hub.push, finetune.model.random_init) == ("lora", True, False)
    assert finetune.model.name_or_path == str((tmp_path / "run" / "pretrain" / "model").resolve())
    assert collect_problems(finetune) == []
    assert not (tmp_path / "run").exists()


def test_pipeline_lora_stage_on_a_random_base_is_refused(compose_cfg, tmp_path, token):
    from ptft_hf.pipeline import compose_stages

    cfg = compose_cfg("experiment=quickstart", "stages.finetune.init_from=null", "hub.push=true", "hub.repo_id=me/legal")
    with pytest.raises(UserError) as err:
        compose_stages(cfg, tmp_path / "run")
    random_base = _random_base("hub.push")
    # without init_from the quickstart's finetune also has no base stage to replay (data.replay)
    assert [p.field for p in err.value.problems] == ["stages.finetune: data.replay", "stages.finetune: hub.push"]
    assert err.value.problems[1] == Problem(f"stages.finetune: {random_base.field}", random_base.what, random_base.fix)
    assert not (tmp_path / "run").exists()


# --- 3. tokenizer training is reproducible with parallelism on ------------------------------------


@pytest.fixture(scope="module")
def texts() -> list[str]:
    from ptft_hf.data.builtin import iter_stdlib_docstrings

    return [d for _, d in zip(range(1500), iter_stdlib_docstrings())]


@pytest.mark.parametrize("kind", ["byte_bpe", "wordpiece"])
def test_tokenizer_training_is_deterministic_with_parallelism(monkeypatch, tmp_path, texts, kind):
    from ptft_hf.models.tokenizers import TOKENIZER_TRAINERS

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    saved = []
    for attempt in range(3):  # WordPiece ids differed on every attempt before the fix
        tokenizer = TOKENIZER_TRAINERS[kind](iter(texts), vocab_size=2000)
        tokenizer.save_pretrained(tmp_path / str(attempt))
        saved.append((tmp_path / str(attempt) / "tokenizer.json").read_bytes())
        state = json.loads(saved[-1])
        if attempt == 0:
            vocab, merges = tokenizer.get_vocab(), state["model"].get("merges")
        assert tokenizer.get_vocab() == vocab and state["model"].get("merges") == merges
    assert saved[1] == saved[0] and saved[2] == saved[0]
    assert len(vocab) == 2000
    if kind == "byte_bpe":
        assert len(merges) == 2000 - 256 - 2  # bytes and two special tokens, the rest merges
    else:
        assert any(t.startswith("##") for t in vocab)


def test_wordpiece_continuation_tokens_are_ordinary_vocabulary(texts):
    """They are handed to the trainer as special tokens to fix their ids, and are not special after."""
    from ptft_hf.models.tokenizers import BERT_SPECIALS, train_wordpiece

    tokenizer = train_wordpiece(texts, vocab_size=2000)
    assert sorted(tokenizer.get_added_vocab()) == sorted(BERT_SPECIALS.values())
    assert sorted(tokenizer.all_special_tokens) == sorted(BERT_SPECIALS.values())
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == list(BERT_SPECIALS.values())
    assert "##e" in tokenizer.get_vocab()
    encoded = tokenizer("Returns ##e x")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == ["[CLS]", "returns", "#", "#", "e", "x", "[SEP]"]
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "returns # # e x"


def test_an_uncached_hub_id_under_hf_hub_offline_is_one_problem_naming_the_local_folder_fix(compose_cfg, tmp_path, monkeypatch):
    from ptft_hf.checks import collect_problems

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problems = collect_problems(compose_cfg("model=qwen2_5_0_5b", "objective=sft", "data=text_files",
                                            f"data.path={tmp_path}"))
    offline = [p for p in problems if p.field == "model.name_or_path"]
    assert len(offline) == 1 and "'Qwen/Qwen2.5-0.5B' is a Hub id that is not in the local cache" in str(offline[0])
    assert "model.name_or_path=FOLDER" in str(offline[0])
    # the same id once in the cache (the layout huggingface_hub writes), or a local folder: no problem
    snapshot = cache / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--Qwen--Qwen2.5-0.5B" / "refs").mkdir()
    (cache / "models--Qwen--Qwen2.5-0.5B" / "refs" / "main").write_text("abc123")
    assert not [p for p in collect_problems(compose_cfg("model=qwen2_5_0_5b")) if p.field == "model.name_or_path"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    (snapshot / "config.json").unlink()
    assert not [p for p in collect_problems(compose_cfg("model=qwen2_5_0_5b")) if p.field == "model.name_or_path"]


def test_bos_eos_flags_on_a_wordpiece_tokenizer_trained_here_are_refused(compose_cfg):
    """BERT's template already wraps each text in [CLS] ... [SEP]; it has no BOS/EOS to add."""
    assert _refused(compose_cfg("model=tiny_bert", "objective=classification", "data.label_column=category",
                                "model.tokenizer.add_eos_token=true")) == [
        Problem("model.tokenizer.add_eos_token", "a WordPiece tokenizer has no BOS/EOS: it puts [CLS] ... [SEP] around "
                "every text already", "drop model.tokenizer.add_eos_token")]
    assert collect_problems(compose_cfg("model=tiny_gpt2", "objective=classification", "data.label_column=category",
                                        "model.tokenizer.add_bos_token=true", "model.tokenizer.add_eos_token=true")) == []


def test_add_eos_token_outside_classification_is_refused(compose_cfg):
    """Saved with the model, an EOS after every text would end each generation prompt."""
    problems = collect_problems(compose_cfg("objective=clm", "model.tokenizer.add_eos_token=true"))
    assert [p.field for p in problems] == ["model.tokenizer.add_eos_token"]
    assert "objective=clm" in problems[0].what
    assert collect_problems(compose_cfg("objective=clm", "model.tokenizer.add_bos_token=true")) == []
