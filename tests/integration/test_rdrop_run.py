"""objective.rdrop_alpha reaches the trainer of a real run (in-process: the recipe is under test)."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_OVERRIDES


@pytest.mark.parametrize("alpha,passes", [(0.0, 1), (1.0, 2)])
def test_a_classification_run_with_rdrop_counts_both_passes_in_its_cost(compose_cfg, tmp_path, alpha, passes):
    from ptft_hf.recipe import run

    rows = [("card arrived late", "card"), ("where is my card", "card"), ("top up failed", "top_up"),
            ("my top up is pending", "top_up")] * 6
    train = tmp_path / "train.csv"
    train.write_text("text,category\n" + "".join(f"{text},{label}\n" for text, label in rows))
    cfg = compose_cfg("objective=classification", "data=banking77", f"data.path={train}", f"data.eval_path={train}",
                      "data.label_column=category", *TINY_OVERRIDES, "model.tokenizer.vocab_size=300",
                      "trainer.max_steps=2", f"objective.rdrop_alpha={alpha}")
    metrics = run(cfg, tmp_path / "run")
    per_token = 4 * metrics["parameters"] + 2 * metrics["trainable_parameters"]
    assert metrics["train_flops_estimate"] == passes * metrics["train_tokens"] * per_token
