"""The typed records of what a run measured, and the flat metrics.json laid out from them: the same
keys older versions wrote, plus the `references` record that readers prefer."""

from __future__ import annotations

from ptft_hf.training.run_metrics import Evaluation, Throughput, reference_perplexities, train_tokens


def _evaluation() -> Evaluation:
    return Evaluation(before={"eval_loss": 3.0, "eval_perplexity": 20.09, "eval_runtime": 1.5},
                      after={"eval_loss": 2.0, "eval_perplexity": 7.39, "eval_runtime": 1.4, "eval_tokens": 310},
                      references_before={"eval_wiki_loss": 4.0, "eval_wiki_perplexity": 54.6, "eval_wiki_runtime": 0.5},
                      references_after={"eval_wiki_loss": 4.5, "eval_wiki_perplexity": 90.0},
                      reference_names=["wiki"])


def test_evaluation_lays_out_the_flat_keys_and_the_typed_references():
    metrics = _evaluation().as_metrics()
    assert metrics == {
        "eval_loss_before": 3.0, "eval_perplexity_before": 20.09,
        "eval_loss": 2.0, "eval_perplexity": 7.39, "eval_runtime": 1.4, "eval_tokens": 310,
        "eval_wiki_loss_before": 4.0, "eval_wiki_perplexity_before": 54.6,
        "eval_wiki_loss": 4.5, "eval_wiki_perplexity": 90.0,
        "references": {"wiki": {"loss_before": 4.0, "loss": 4.5, "perplexity_before": 54.6, "perplexity": 90.0}},
    }


def test_reference_perplexities_read_new_and_old_metrics_alike():
    """A metrics.json written before the typed record (flat keys only) reads the same."""
    new = _evaluation().as_metrics()
    old = {k: v for k, v in new.items() if k != "references"}
    assert reference_perplexities(new) == reference_perplexities(old) == [("wiki", 54.6, 90.0)]
    assert reference_perplexities({"eval_perplexity": 3.0, "eval_perplexity_before": 4.0}) == []


def test_throughput_counts_only_what_this_call_trained():
    resumed = Throughput(train_loss=2.5, steps=60, runtime_s=10.0, wall_time_s=12.345, tokens=15360, tokens_this_call=7680,
                         resumed_from_step=30, precision="fp32")
    assert resumed.as_metrics() == {"train_loss": 2.5, "train_steps": 60, "train_runtime_s": 10.0, "train_wall_time_s": 12.35,
                                    "train_tokens": 15360, "train_tokens_per_second": 768.0, "precision": "fp32",
                                    "resumed_from_step": 30}


class _Args:
    per_device_train_batch_size, gradient_accumulation_steps, world_size = 8, 2, 2


class _Prepared:
    def __init__(self, metrics, first_row=None):
        self.metrics, self.train_dataset = metrics, [{"input_ids": first_row or []}]


def test_train_tokens_counts_blocks_or_real_tokens():
    assert train_tokens(_Prepared({"data_train": {"block_size": 32}}), _Args(), 10) == 10 * 8 * 2 * 2 * 32
    assert train_tokens(_Prepared({"padding": {"tokens": 1234}}), _Args(), 10) == 1234
    assert train_tokens(_Prepared({"data_train": {}}, list(range(5))), _Args(), 3) == 3 * 8 * 2 * 2 * 5
