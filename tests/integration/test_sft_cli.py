"""SFT end to end (in-process: the recipe is under test, the CLI layer is covered elsewhere): chat
data from a JSON-lines file, padded or packed, samples, and exact match on a learnable toy task."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTENTS = {"card_arrival": ["where is my card", "my card has not arrived", "card still not here"],
           "top_up_failed": ["my top up failed", "top up did not work", "failed to add money"]}


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_sft_on_chat_jsonl(compose_cfg, tmp_path, packing):
    from ptft_hf.recipe import run

    rows = []
    for intent, prompts in INTENTS.items():
        for prompt in prompts:
            rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": intent}]})
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows * 10) + "\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    metrics = run(compose_cfg(
        "objective=sft", "data=text_files", f"data.path={data}", f"data.eval_path={evals}", *TINY_OVERRIDES,
        f"objective.packing={str(packing).lower()}", "objective.exact_match=true", "objective.max_new_tokens=8",
        "objective.max_length=48", "trainer.max_steps=100", "trainer.learning_rate=1e-2", "trainer.eval_steps=50", "trainer.save_steps=50",
        "samples.prompts=[where is my card]"), tmp_path / "run")
    assert metrics["objective"] == "sft" and metrics["packing"] is packing
    # 60 conversations less the 3 (5%) carved off as the validation split
    assert metrics["data_train"]["documents"] == 57 and metrics["data_train"]["truncated"] == 0
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert metrics["eval_generated"] == len(predictions) == 6
    # the toy task is learnt (3 of 6 on this machine after 100 steps), and the metric is the predictions' mean
    assert metrics["eval_exact_match"] > 0
    assert metrics["eval_exact_match"] == sum(p["exact_match"] for p in predictions) / 6
    assert all(p["exact_match"] == (p["answer"] == p["reference"]) for p in predictions)
    assert [p["reference"] for p in predictions] == [r["messages"][1]["content"] for r in rows]
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} == {"where is my card"}
