"""SFT through the real CLI: chat data from a JSON-lines file, LoRA, packing, samples and exact match."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.integration

INTENTS = {"card_arrival": ["where is my card", "my card has not arrived", "card still not here"],
           "top_up_failed": ["my top up failed", "top up did not work", "failed to add money"]}


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_sft_on_chat_jsonl(cache_env, tmp_path, packing):
    rows = []
    for intent, prompts in INTENTS.items():
        for prompt in prompts:
            rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": intent}]})
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows * 10) + "\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run_cli(
        ["objective=sft", "data=text_files", f"data.path={data}", f"data.eval_path={evals}", *TINY_OVERRIDES,
         f"objective.packing={str(packing).lower()}", "objective.exact_match=true", "objective.max_new_tokens=8",
         "objective.max_length=48", "trainer.max_steps=40", "trainer.learning_rate=5e-3",
         "samples.prompts=[where is my card]", f"hydra.run.dir={tmp_path / 'run'}"],
        cache_env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["objective"] == "sft" and metrics["packing"] is packing
    assert metrics["data_train"]["documents"] == 60 and metrics["data_train"]["truncated"] == 0
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert metrics["eval_generated"] == 6 and 0.0 <= metrics["eval_exact_match"] <= 1.0
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in predictions] == [r["messages"][1]["content"] for r in rows]
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} == {"where is my card"}
