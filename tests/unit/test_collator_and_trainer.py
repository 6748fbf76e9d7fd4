from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.training.trainer import PtftTrainer


def test_collator_labels_are_the_inputs():
    batch = CausalLMCollator()([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert set(batch) == {"input_ids", "labels"}


def test_collator_rejects_unpacked_examples():
    with pytest.raises(ValueError, match="pack the data"):
        CausalLMCollator()([{"input_ids": [1, 2]}, {"input_ids": [1, 2, 3]}])


def test_trainer_eval_is_token_weighted_mean_over_all_blocks(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50))
    blocks = torch.randint(0, 50, (5, 8))
    ds = Dataset.from_dict({"input_ids": blocks.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True)
    trainer = PtftTrainer(model=model, args=args, eval_dataset=ds, data_collator=CausalLMCollator())
    metrics = trainer.evaluate()
    with torch.no_grad():
        model.eval()
        reference = model(input_ids=blocks, labels=blocks).loss.item()  # mean over all 5*7 targets
    assert metrics["eval_tokens"] == 5 * 7
    assert metrics["eval_loss"] == pytest.approx(reference, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(torch.tensor(reference).exp().item(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("workers, accumulation", [(0, 1), (2, 1), (0, 2)])
def test_padding_counter_counts_in_the_training_process_with_dataloader_workers(tmp_path, workers, accumulation):
    """A counting collator would count inside the worker processes (and report 0 here with
    workers); the trainer's batch observer sees every batch where it arrives."""
    from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from ptft_hf.data.collators import PaddingCounter

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=32, num_labels=2))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")),
                                        pad_token="[PAD]", unk_token="[UNK]")
    lengths = [3, 9, 4, 12, 5, 7, 2, 10]
    ds = Dataset.from_dict({"input_ids": [[5] * n for n in lengths], "attention_mask": [[1] * n for n in lengths],
                            "labels": [i % 2 for i in range(len(lengths))]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=1, report_to="none",
                             use_cpu=True, dataloader_num_workers=workers, train_sampling_strategy="sequential",
                             gradient_accumulation_steps=accumulation,
                             save_strategy="no", disable_tqdm=True)
    counter = PaddingCounter()
    trainer = PtftTrainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
                          batch_observers=[counter], token_metrics=False)
    trainer.train()
    # batches in order: (3, 9) (4, 12) (5, 7) (2, 10): padded to 9, 12, 7, 10
    assert counter.stats == {"tokens": sum(lengths), "padded_tokens": 6 + 8 + 2 + 8, "padded_share": round(24 / (52 + 24), 4)}
