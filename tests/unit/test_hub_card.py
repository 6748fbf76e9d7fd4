"""The model card's metadata and lineage from run folders: base_model is a Hub id found up the
lineage or absent, never a local path. Run folders here hold real composed configs and the
metrics keys a run writes; no model is trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ptft_hf.hub.card import ADAPTER, FULL, MERGED, render_card
from ptft_hf.hub.lineage import adapter_base_on_hub, cached_snapshot_id, trace_lineage

SHA = "ab" * 32


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _ = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head)


@pytest.fixture
def make_run(compose_cfg):
    def _make(folder: Path, *overrides: str, lineage: dict | None = None, **metrics) -> Path:
        cfg = compose_cfg(*overrides)
        folder.mkdir(parents=True)
        (folder / "model").mkdir()
        OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
        record = {
            "run_name": folder.name, "objective": cfg.objective.name, "strategy": cfg.strategy.name,
            "data": cfg.data.name, "model": cfg.model.name, "base_model": cfg.model.name_or_path,
            "random_init": cfg.model.random_init, "eval_loss": 3.0, "eval_loss_before": 4.0,
            "eval_perplexity": 20.0, "eval_perplexity_before": 54.6, "train_steps": 10, "train_tokens": 2560,
            "train_wall_time_s": 1.5, "train_flops_estimate": 1.0e9, "parameters": 1000, "trainable_parameters": 10,
            "trainable_percent": 1.0, "data_train": {"documents": 300, "tokens": 40000}, "lineage": lineage or {},
            **metrics,
        }
        (folder / "metrics.json").write_text(json.dumps(record))
        return folder

    return _make


def test_adapter_on_a_hub_checkpoint_names_it(make_run, tmp_path):
    run = make_run(tmp_path / "run", "model=gpt2", "strategy=lora", "data=banking77", "objective=classification",
                   num_labels=77, eval_accuracy=0.9, eval_accuracy_before=0.01, eval_f1=0.8, eval_f1_before=0.0)
    meta = front_matter(render_card(run, ADAPTER, "me/router"))
    assert meta["base_model"] == "openai-community/gpt2" and meta["base_model_relation"] == "adapter"
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert meta["tags"] == ["ptft_hf", "lora", "classification"]
    assert meta["datasets"] == ["PolyAI/banking77"]
    assert meta["metrics"] == ["perplexity", "accuracy", "f1"]


def test_base_model_is_found_up_a_pipeline_lineage_never_a_local_path(make_run, tmp_path):
    pretrain = make_run(tmp_path / "pipe" / "pretrain", "model=gpt2", "data=wikitext2")
    finetune = make_run(tmp_path / "pipe" / "finetune", "model=pretrained", f"model.name_or_path={pretrain / 'model'}",
                        "strategy=lora", "data=builtin_licenses",
                        lineage={"init_from_stage": "pretrain", "base_run_dir": str(pretrain),
                                 "base_config_sha256": SHA, "base_model": str(pretrain / "model")})
    card = render_card(finetune, ADAPTER, "me/legal")
    meta = front_matter(card)
    assert meta["base_model"] == "openai-community/gpt2"
    assert "base_model_relation" not in meta  # the adapter sits on stage 1's model, not on gpt2 itself
    assert meta["datasets"] == ["Salesforce/wikitext"]  # builtin corpora have no Hub id
    assert str(tmp_path) not in card.split("## Config")[0]  # no local path before the config dump
    lineage = card.split("## Lineage")[1].split("## Evaluation")[0]
    assert lineage.index("1. **pretrain**: continued pretraining") < lineage.index("2. **finetune** (this model): fine-tuning")
    assert "[`openai-community/gpt2`](https://huggingface.co/openai-community/gpt2)" in lineage
    assert f"config sha256 `{SHA[:16]}…`" in lineage and "the model of stage `pretrain`" in lineage
    assert "PeftModel.from_pretrained(base, \"me/legal\")" in card and "path/to/base-model" in card


def test_run_started_from_another_runs_model_folder_follows_it(make_run, tmp_path):
    first = make_run(tmp_path / "first", "model=gpt2", "data=wikitext2")
    second = make_run(tmp_path / "second", "model=pretrained", f"model.name_or_path={first / 'model'}")
    assert [r.name for r in trace_lineage(second)] == ["first", "second"]
    assert front_matter(render_card(second, FULL))["base_model"] == "openai-community/gpt2"


def test_moved_pipeline_folder_still_finds_the_earlier_stage(make_run, tmp_path):
    pretrain = make_run(tmp_path / "pipe" / "pretrain", "model=gpt2")
    finetune = make_run(tmp_path / "pipe" / "finetune", "model=pretrained", "model.name_or_path=/gone/pretrain/model",
                        "strategy=lora", lineage={"init_from_stage": "pretrain", "base_run_dir": "/gone/pretrain",
                                                  "base_config_sha256": SHA})
    assert [r.run_dir for r in trace_lineage(finetune)] == [pretrain.resolve(), finetune.resolve()]
    assert front_matter(render_card(finetune, ADAPTER))["base_model"] == "openai-community/gpt2"


def test_quickstart_shape_from_scratch_has_no_base_model(make_run, tmp_path):
    pretrain = make_run(tmp_path / "pipe" / "pretrain", "model=tiny_gpt2")
    finetune = make_run(tmp_path / "pipe" / "finetune", "model=pretrained", f"model.name_or_path={pretrain / 'model'}",
                        "strategy=lora", "data=builtin_licenses",
                        lineage={"init_from_stage": "pretrain", "base_run_dir": str(pretrain), "base_config_sha256": SHA})
    card = render_card(finetune, ADAPTER)
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert "1. **pretrain**: pretraining" in card and "`tiny_gpt2` built from its config, trained from scratch" in card
    assert "No `base_model`" in card


@pytest.mark.parametrize("case", ["unknown-local-folder", "random-init-control"])
def test_weights_not_from_a_hub_checkpoint_give_no_base_model(make_run, tmp_path, case):
    checkpoint = tmp_path / "somewhere" / "checkpoint"
    checkpoint.mkdir(parents=True)
    overrides = {"unknown-local-folder": ["model=pretrained", f"model.name_or_path={checkpoint}"],
                 "random-init-control": ["model=gpt2", "model.random_init=true"]}[case]
    run = make_run(tmp_path / "run", *overrides)
    card = render_card(run, FULL)
    assert "base_model" not in front_matter(card)
    assert str(checkpoint) not in card.split("## Config")[0]
    if case == "unknown-local-folder":
        assert "a local checkpoint (`somewhere/checkpoint`), origin not recorded" in card
    else:
        assert "random weights with the architecture and tokenizer of" in card


@pytest.mark.parametrize("objective,tag", [("clm", "text-generation"), ("sft", "text-generation"),
                                           ("mlm", "fill-mask"), ("classification", "text-classification")])
def test_pipeline_tag_follows_the_objective(make_run, tmp_path, objective, tag):
    run = make_run(tmp_path / "run", "model=gpt2", f"objective={objective}")
    meta = front_matter(render_card(run, FULL))
    assert meta["pipeline_tag"] == tag and meta["library_name"] == "transformers" and objective in meta["tags"]
    assert meta["base_model_relation"] == "finetune"


def test_merged_adapter_is_a_transformers_model_merged_from_its_base(make_run, tmp_path):
    run = make_run(tmp_path / "run", "model=gpt2", "strategy=dora")
    meta = front_matter(render_card(run, MERGED, "me/merged"))
    assert (meta["library_name"], meta["base_model_relation"]) == ("transformers", "merge")
    assert meta["tags"] == ["ptft_hf", "dora", "clm", "merged"]


def test_a_copy_of_a_hub_checkpoint_in_the_hf_cache_is_named_by_its_id_and_commit(make_run, tmp_path):
    snapshot = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / ("c0" * 20)
    snapshot.mkdir(parents=True)
    run = make_run(tmp_path / "run", "model=qwen2_5_0_5b", f"model.name_or_path={snapshot}", "strategy=lora")
    card = render_card(run, ADAPTER, "me/qwen-adapter")
    assert (front_matter(card)["base_model"], front_matter(card)["base_model_relation"]) == ("Qwen/Qwen2.5-0.5B", "adapter")
    assert f'AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B", revision="{"c0" * 20}")' in card
    assert [cached_snapshot_id(str(p)) for p in (snapshot, snapshot.parent, tmp_path / "snapshots" / "x")] == [
        ("Qwen/Qwen2.5-0.5B", "c0" * 20), None, None]
    full = render_card(make_run(tmp_path / "full", "model=qwen2_5_0_5b", f"model.name_or_path={snapshot}"), FULL)
    assert front_matter(full)["base_model"] == "Qwen/Qwen2.5-0.5B" and "a copy in the Hugging Face cache" in full


def test_an_earlier_stage_pushed_in_full_is_the_adapters_base_a_dry_run_is_not(make_run, tmp_path):
    pretrain = make_run(tmp_path / "pipe" / "pretrain", "model=tiny_gpt2")
    finetune = make_run(tmp_path / "pipe" / "finetune", "model=pretrained", f"model.name_or_path={pretrain / 'model'}",
                        "strategy=lora", lineage={"init_from_stage": "pretrain", "base_run_dir": str(pretrain),
                                                  "base_config_sha256": SHA})
    record = {"repo_id": "me/base", "dry_run": True, "kind": "full", "revision": None}
    (pretrain / "hub_push.json").write_text(json.dumps(record))
    assert adapter_base_on_hub(trace_lineage(finetune)) is None
    (pretrain / "hub_push.json").write_text(json.dumps({**record, "dry_run": False}))
    assert adapter_base_on_hub(trace_lineage(finetune)) == ("me/base", None)
    assert front_matter(render_card(finetune, ADAPTER))["base_model"] == "me/base"
    # a push records its commit: the adapter is pinned to those exact weights, and a dry run staged
    # later keeps the push's record beside its own
    pushed = {**record, "dry_run": False, "revision": "v1", "commit_url": "https://huggingface.co/me/base/commit/" + "9" * 40}
    (pretrain / "hub_push.json").write_text(json.dumps({**record, "last_push": pushed}))
    assert adapter_base_on_hub(trace_lineage(finetune)) == ("me/base", "9" * 40)
