"""Publishing to the Hub from real runs: the quickstart pipeline's dry run, `ptft-hf-push`, the reload
check, the end-of-run push, and the token's absence from every file and log.

Only the network boundary is replaced: `HfApi` as `ptft_hf.hub.push` looks it up becomes a recorder of
`create_repo` / `create_branch` / `upload_folder` calls (which lists the folder's files at upload
time). Training, staging, the model card, the reload check and the CLIs run for real.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ptft_hf.config.schema import HubConfig
from ptft_hf.errors import UserError
from ptft_hf.hub import push as push_module
from ptft_hf.hub.publish import publish_run
from ptft_hf.hub.push_cli import push_main
from ptft_hf.hub.stage import reload_check, stage_run
from tests.conftest import PLANTED_TOKEN, QUICKSTART_SHARED, cli_output, copy_run, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = PLANTED_TOKEN
SHARED = QUICKSTART_SHARED
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]
FULL_FILES = ["README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"]
RELOAD_FIX = ("nothing was uploaded; a staged weight differs from the trained one or is missing (fix the run or stage "
              "again), or raise hub.atol if the difference is expected")
TEXTS = ["Permission is hereby granted, free of charge", "Return the number of items in the container."]


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi at the network boundary; records every call."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, *args, **kwargs):
        RecordingHfApi.calls.append(("HfApi", dict(kwargs, args=args)))

    def create_repo(self, repo_id, **kwargs):
        RecordingHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        RecordingHfApi.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        RecordingHfApi.calls.append(("upload_folder", {**kwargs, "files": files}))
        return None


@pytest.fixture
def recorder(monkeypatch):
    RecordingHfApi.calls = []
    monkeypatch.setattr(push_module, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return RecordingHfApi


def _calls(recorder, name: str) -> list[dict]:
    return [kwargs for call, kwargs in recorder.calls if call == name]


@pytest.fixture
def quickstart(quickstart_run, tmp_path):
    """A private copy of the session's shared quickstart pipeline (tests/conftest.py QUICKSTART_RUN: trained
    with a dry run of its adapter and the token planted in the environment and on the command line), and
    what the CLI printed while training it. Pushing stages into the run folder, hence the copy."""
    return copy_run(quickstart_run, tmp_path / "quickstart"), cli_output(quickstart_run)


def _front_matter(card: str) -> dict:
    head, _ = card[len("---\n"):].split("\n---\n", 1)
    return yaml.safe_load(head)


@torch.no_grad()
def _logits(model, tokenizer) -> list[torch.Tensor]:
    model.eval()
    return [model(**tokenizer(t, return_tensors="pt")).logits for t in TEXTS]


def test_dry_run_stages_the_adapter_and_it_loads_back(quickstart):
    run_dir, _ = quickstart
    staged = run_dir / "finetune" / "hub"
    assert sorted(p.name for p in staged.iterdir()) == ADAPTER_FILES
    assert not (run_dir / "pretrain" / "hub").exists()  # hub.* on a pipeline's command line: last stage only
    record = json.loads((run_dir / "finetune" / "hub_push.json").read_text())
    assert record["dry_run"] is True and record["url"] is None and record["reload_max_abs_logit_diff"] <= 1e-4
    tokenizer = AutoTokenizer.from_pretrained(staged)
    base = run_dir / "pretrain" / "model"
    published = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), staged)
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run_dir / "finetune" / "model")
    plain = AutoModelForCausalLM.from_pretrained(base)
    for got, want, without in zip(_logits(published, tokenizer), _logits(trained, tokenizer), _logits(plain, tokenizer)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert (got - without).abs().max() > 1e-4  # the adapter does change the model


def test_card_metadata_and_lineage(quickstart):
    run_dir, _ = quickstart
    card = (run_dir / "finetune" / "hub" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["ptft_hf", "lora", "clm"] and meta["metrics"] == ["perplexity", "accuracy"]
    assert "base_model" not in meta  # stage 1 was trained from scratch: no Hub checkpoint up the lineage
    assert "datasets" not in meta  # builtin corpora have no Hub id
    lineage = card.split("## Lineage")[1].split("## Evaluation")[0]
    assert lineage.index("1. **pretrain**: pretraining, objective `clm`, strategy `full`, on `builtin_docs`") < \
        lineage.index("2. **finetune** (this model): fine-tuning, objective `clm`, strategy `lora`, on `builtin_licenses`")
    pretrain_sha = json.loads((run_dir / "finetune" / "metrics.json").read_text())["lineage"]["base_config_sha256"]
    assert f"config sha256 `{pretrain_sha[:16]}…`" in lineage
    for section in ("## Evaluation", "## Training cost", "## Use it", "## Config"):
        assert section in card
    assert "| perplexity |" in card and "| builtin_docs_perplexity |" in card
    assert 'PeftModel.from_pretrained(base, "me/quickstart-legal")' in card
    assert (run_dir / "finetune" / "model" / "README.md").read_text() == card  # model/ keeps the same card


def test_push_adapter_records_repo_privacy_message_and_files(quickstart, recorder, capsys):
    run_dir, _ = quickstart
    assert push_main([str(run_dir / "finetune"), "--repo-id", "me/legal-adapter"]) == 0
    assert recorder.calls[0] == ("HfApi", {"args": ()})  # no token handed over: huggingface_hub resolves it
    assert _calls(recorder, "create_repo") == [
        {"repo_id": "me/legal-adapter", "private": True, "exist_ok": True, "repo_type": "model"}]
    [upload] = _calls(recorder, "upload_folder")
    assert upload["repo_id"] == "me/legal-adapter" and upload["revision"] is None
    assert upload["folder_path"] == str(run_dir / "finetune" / "hub")
    assert upload["commit_message"] == "ptft_hf: adapter from run finetune (clm, lora, builtin_licenses)"
    assert upload["files"] == ADAPTER_FILES
    assert all(TOKEN not in repr(kwargs) for _, kwargs in recorder.calls)
    assert "pushed to https://huggingface.co/me/legal-adapter (private)" in capsys.readouterr().out


def test_push_full_run_public_to_a_branch(quickstart, recorder):
    run_dir, _ = quickstart
    assert push_main([str(run_dir / "pretrain"), "--repo-id", "me/tiny-base", "--public", "--revision", "v1",
                      "--commit-message", "first base"]) == 0
    assert _calls(recorder, "create_repo")[0]["private"] is False
    assert _calls(recorder, "create_branch") == [{"repo_id": "me/tiny-base", "branch": "v1", "exist_ok": True,
                                                  "repo_type": "model"}]
    [upload] = _calls(recorder, "upload_folder")
    assert (upload["commit_message"], upload["revision"]) == ("first base", "v1")
    assert upload["files"] == FULL_FILES
    assert not [f for f in upload["files"] if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    meta = _front_matter((run_dir / "pretrain" / "hub" / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "base_model" not in meta and "full" in meta["tags"]

    # the adapter trained on that base now names it by Hub id, so others can load it; the reload
    # check still runs against the local copy the run trained on (the same weights, by lineage)
    local_base = json.loads((run_dir / "finetune" / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(local_base).is_absolute() and local_base.endswith("/pretrain/model")  # the folder it trained from
    assert push_main([str(run_dir / "finetune"), "--repo-id", "me/legal-adapter", "--dry-run"]) == 0
    staged = run_dir / "finetune" / "hub"
    adapter_config = json.loads((staged / "adapter_config.json").read_text())
    assert (adapter_config["base_model_name_or_path"], adapter_config["revision"]) == ("me/tiny-base", "v1")
    card = (staged / "README.md").read_text()
    meta = _front_matter(card)
    assert (meta["base_model"], meta["base_model_relation"]) == ("me/tiny-base", "adapter")
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-base", revision="v1")' in card
    assert "which is not on the Hub" not in card
    assert json.loads((run_dir / "finetune" / "hub_push.json").read_text())["reload_max_abs_logit_diff"] <= 1e-4


def test_full_run_dry_run_loads_back(quickstart, capsys):
    run_dir, _ = quickstart
    staging = run_dir.parent / "full-staging"
    assert push_main([str(run_dir / "pretrain"), "--dry-run", "--staging-dir", str(staging)]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing uploaded" in out and "largest logit difference 0 " in out
    assert sorted(p.name for p in staging.iterdir()) == FULL_FILES
    tokenizer = AutoTokenizer.from_pretrained(staging)
    for got, want in zip(_logits(AutoModelForCausalLM.from_pretrained(staging), tokenizer),
                         _logits(AutoModelForCausalLM.from_pretrained(run_dir / "pretrain" / "model"), tokenizer)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("stage,weights", [("finetune", "adapter_model.safetensors"), ("pretrain", "model.safetensors")])
def test_corrupted_staged_weight_fails_the_reload_check(quickstart, tmp_path, stage, weights):
    run_dir, _ = quickstart
    staged = stage_run(run_dir / stage, HubConfig(dry_run=True, dir=str(tmp_path / "staged")))
    assert reload_check(staged) == 0.0
    tensors = load_file(staged.folder / weights)
    name = next(k for k in tensors if ("lora_B" in k if stage == "finetune" else k.endswith("c_fc.weight")))
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, staged.folder / weights, metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        reload_check(staged)
    [problem] = err.value.problems
    kind = "adapter" if stage == "finetune" else "full model"
    assert problem.field == "hub.reload_check"
    assert re.fullmatch(rf"the staged {kind} in '{re.escape(str(staged.folder))}' gives logits that differ from the "
                        rf"trained model's by [0-9.e+-]+ \(tolerance 0.0001\)", problem.what), problem.what
    assert float(problem.what.split(" by ")[1].split()[0]) > 1e-3  # the corruption shows
    assert problem.fix == RELOAD_FIX


def test_a_mismatch_stops_the_push(quickstart, recorder):
    """The reference is another model (the base without the adapter): the check fails, nothing is uploaded."""
    run_dir, _ = quickstart
    other = AutoModelForCausalLM.from_pretrained(run_dir / "pretrain" / "model")
    with pytest.raises(UserError, match="hub.reload_check: .* differ from the trained model's"):
        publish_run(run_dir / "finetune", HubConfig(push=True, repo_id="me/never"), trained=other)
    assert _calls(recorder, "create_repo") == [] and _calls(recorder, "upload_folder") == []


def test_end_of_run_push_uses_the_model_in_memory(quickstart, recorder, compose_cfg, tmp_path):
    """Under bf16 autocast, as trainer.bf16=auto chooses on a CPU with native bf16: accelerate wrapped the
    trained model's forward in autocast; the reload check compares its own (fp32) forward with the staged folder's."""
    from ptft_hf.recipe import run

    run_dir, _ = quickstart
    shared = [a.replace("trainer.bf16=false", "trainer.bf16=true") for a in SHARED]
    cfg = compose_cfg("model=pretrained", f"model.name_or_path={run_dir / 'pretrain' / 'model'}", "strategy=dora",
                      "data=builtin_licenses", *shared, "trainer.max_steps=3", "trainer.eval_steps=3",
                      "trainer.save_steps=3", "hub.push=true", "hub.repo_id=me/dora", "hub.commit_message=end of run")
    run(cfg, tmp_path / "run")
    [create] = _calls(recorder, "create_repo")
    [upload] = _calls(recorder, "upload_folder")
    assert (create["repo_id"], create["private"], upload["commit_message"]) == ("me/dora", True, "end of run")
    assert upload["files"] == ADAPTER_FILES and (tmp_path / "run" / "metrics.json").is_file()
    assert json.loads((tmp_path / "run" / "hub_push.json").read_text())["url"] == "https://huggingface.co/me/dora"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == "bf16"


def test_failed_push_leaves_a_finished_run_and_one_line(quickstart, cache_env, tmp_path):
    """A real failure, not a mock: the Hub is offline (HF_HUB_OFFLINE=1 in cache_env)."""
    run_dir, _ = quickstart
    result = run_cli(["model=pretrained", f"model.name_or_path={run_dir / 'pretrain' / 'model'}", "strategy=lora",
                      "data=builtin_licenses", *SHARED, "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.save_steps=2",
                      "hub.push=true", "hub.repo_id=me/offline", f"hydra.run.dir={tmp_path / 'run'}"],
                     dict(cache_env, HF_TOKEN=TOKEN), cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("ptft-hf: error:")]
    assert len(errors) == 1 and re.fullmatch(
        r"ptft-hf: error: hub.push: uploading to 'me/offline' failed \(\w+: [^\n]*\); check the network and the token's "
        r"write access; the staged folder is kept: retry with ptft-hf-push RUN_DIR", errors[0]), errors
    assert "Traceback" not in result.stderr and TOKEN not in result.stdout + result.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()  # finished: ptft-hf-push can publish it later
    assert sorted(p.name for p in (tmp_path / "run" / "hub").iterdir()) == ADAPTER_FILES


def test_the_token_is_in_no_file_and_no_log(quickstart, recorder, caplog, capsys):
    run_dir, output = quickstart  # trained and dry-run with HF_TOKEN planted in the environment
    with caplog.at_level(logging.DEBUG):
        assert push_main([str(run_dir / "finetune"), "--repo-id", "me/legal-adapter", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert TOKEN not in output + caplog.text + captured.out + captured.err
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaks == []


class FailingHfApi(RecordingHfApi):
    """The network boundary failing at the upload, with the token in the server's message."""

    def upload_folder(self, **kwargs):
        RecordingHfApi.calls.append(("upload_folder", kwargs))
        raise RuntimeError(f"403 Forbidden: token {TOKEN} cannot write to this repo\nrequest id 1 with {TOKEN}")


def _push_errors(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("ptft-hf-push: error:")]


def _hub_folder_hashes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_upload_error_is_one_line_with_the_token_masked(quickstart, recorder, monkeypatch, capsys):
    run_dir, _ = quickstart
    monkeypatch.setattr(push_module, "HfApi", FailingHfApi)
    assert push_main([str(run_dir / "finetune"), "--repo-id", "me/forbidden"]) == 2
    captured = capsys.readouterr()
    assert _push_errors(captured.err) == [
        "ptft-hf-push: error: hub.push: uploading to 'me/forbidden' failed (RuntimeError: 403 Forbidden: token *** "
        "cannot write to this repo); check the network and the token's write access; the staged folder is kept: "
        "retry with ptft-hf-push RUN_DIR"]
    assert TOKEN not in captured.out + captured.err
    assert len(_calls(recorder, "upload_folder")) == 1
    assert sorted(p.name for p in (run_dir / "finetune" / "hub").iterdir()) == ADAPTER_FILES  # kept for a retry


def test_push_refuses_a_pipeline_folder(quickstart, recorder, capsys):
    run_dir, _ = quickstart
    before = _hub_folder_hashes(run_dir)
    assert push_main([str(run_dir), "--repo-id", "me/pipeline"]) == 2
    stage_dirs = ", ".join(str(run_dir.resolve() / s) for s in ("pretrain", "finetune"))
    assert _push_errors(capsys.readouterr().err) == [
        f"ptft-hf-push: error: run_dir: '{run_dir.resolve()}' is a pipeline folder; give one stage's folder: {stage_dirs}"]
    assert recorder.calls == [] and _hub_folder_hashes(run_dir) == before


@pytest.mark.parametrize("where", ["run", "model", "parent"])
def test_push_refuses_a_staging_dir_that_would_wipe_the_run(quickstart, recorder, capsys, where):
    run_dir, _ = quickstart
    stage = (run_dir / "finetune").resolve()
    staging = {"run": stage, "model": stage / "model", "parent": stage.parent}[where]
    before = _hub_folder_hashes(run_dir)
    assert push_main([str(stage), "--dry-run", "--staging-dir", str(staging)]) == 2
    assert _push_errors(capsys.readouterr().err) == [
        f"ptft-hf-push: error: hub.dir: '{staging}' would wipe the run folder or its model; choose an empty folder of its own"]
    assert _hub_folder_hashes(run_dir) == before
