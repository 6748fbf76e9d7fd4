from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import (BertConfig, BertForSequenceClassification, DataCollatorWithPadding, PreTrainedTokenizerFast,
                          TrainingArguments)
from transformers.trainer_pt_utils import LengthGroupedSampler

from ptft_hf.training.sampling import ShuffledLengthGroupedSampler, length_grouped_batches
from ptft_hf.training.trainer import PtftTrainer


def padded_share(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / sum(len(b) * max(lengths[i] for i in b) for b in batches)


def index_sampler(loader):
    """The index sampler under accelerate's batch-sampler wrappers."""
    sampler = loader.batch_sampler
    while not isinstance(sampler, torch.utils.data.Sampler) or hasattr(sampler, "batch_sampler") or hasattr(sampler, "sampler"):
        sampler = getattr(sampler, "batch_sampler", None) or sampler.sampler
    return sampler


def test_one_megabatch_gives_consecutive_slices_of_the_sorted_order_with_the_longest_first():
    lengths = [7, 3, 12, 5, 9, 1, 11, 4, 8, 2, 10, 6, 13]  # distinct: the sorted order is unique
    batches = length_grouped_batches(lengths, batch_size=3, megabatch_batches=10, generator=torch.Generator().manual_seed(0))
    by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    slices = [by_length[i : i + 3] for i in range(0, 12, 3)]
    assert batches[0] == slices[0]  # holds the longest example (13)
    assert sorted(batches[:4]) == sorted(slices)  # the four full batches, in some order
    assert batches[4] == [by_length[12]]  # the short batch (length 1) stays last
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_batches_are_shuffled_not_served_longest_first():
    lengths = [(i * 37) % 101 + 1 for i in range(400)]
    batches = length_grouped_batches(lengths, batch_size=4, megabatch_batches=100, generator=torch.Generator().manual_seed(1))
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima[0] == 101
    assert maxima != sorted(maxima, reverse=True)  # transformers' sampler would serve 101, ..., 1 here
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert all(len(b) == 4 for b in batches)


def test_same_generator_seed_same_order_and_larger_megabatches_pad_less():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(3, 80, (2000,), generator=g).tolist()
    first = length_grouped_batches(lengths, 16, 20, torch.Generator().manual_seed(5))
    assert first == length_grouped_batches(lengths, 16, 20, torch.Generator().manual_seed(5))
    assert first != length_grouped_batches(lengths, 16, 20, torch.Generator().manual_seed(6))
    shares = [padded_share(lengths, length_grouped_batches(lengths, 16, m, torch.Generator().manual_seed(5)))
              for m in (1, 5, 125)]
    assert shares[0] > shares[1] > shares[2]
    assert shares[2] < 0.01  # one megabatch: neighbours in the sorted order differ by at most one token here
    stock = list(LengthGroupedSampler(16, lengths=lengths, generator=torch.Generator().manual_seed(5)))
    assert padded_share(lengths, [stock[i : i + 16] for i in range(0, 2000, 16)]) > shares[2]


def test_the_order_depends_only_on_seed_and_epoch():
    """Every process of a distributed run, and a resumed run, must build the same order."""
    lengths = [(i * 13) % 29 + 1 for i in range(300)]
    first, other_rank = ShuffledLengthGroupedSampler(lengths, 8, 5, seed=7), ShuffledLengthGroupedSampler(lengths, 8, 5, seed=7)
    torch.manual_seed(123)  # the global generator plays no part
    epoch0 = list(first)
    torch.rand(1000)
    assert list(other_rank) == epoch0
    first.set_epoch(1)
    epoch1 = list(first)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(300))
    other_rank.set_epoch(1)
    assert list(other_rank) == epoch1
    assert list(ShuffledLengthGroupedSampler(lengths, 8, 5, seed=8)) != epoch0


@pytest.mark.parametrize("bad", [(0, 5), (4, 0)])
def test_sizes_below_one_are_refused(bad):
    with pytest.raises(ValueError, match="must be >= 1"):
        length_grouped_batches([1, 2, 3], *bad)


def test_trainer_serves_the_samplers_batches_from_the_length_column(tmp_path):
    """The Trainer drops the `length` column (not a model input) before it builds the sampler; the
    sampler reads it from the training set, and the DataLoader cuts the same batches back out."""
    from tokenizers import Tokenizer, models

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")),
                                        pad_token="[PAD]", unk_token="[UNK]")
    lengths = [(i * 7) % 23 + 2 for i in range(40)]
    ds = Dataset.from_dict({"input_ids": [[5] * n for n in lengths], "attention_mask": [[1] * n for n in lengths],
                            "labels": [i % 2 for i in range(40)], "length": lengths})
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=32, num_labels=2))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none", use_cpu=True,
                             train_sampling_strategy="group_by_length", save_strategy="no", disable_tqdm=True)
    trainer = PtftTrainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
                          token_metrics=False, length_megabatch=10)
    loader = trainer.get_train_dataloader()
    assert isinstance(index_sampler(loader), ShuffledLengthGroupedSampler)
    widths = [batch["input_ids"].shape[1] for batch in loader]
    real = [int(batch["attention_mask"].sum()) for batch in loader]
    # 40 examples of lengths 2..24 in one megabatch: each batch holds 4 consecutive sorted lengths
    assert sum(real) == sum(lengths)
    assert sum(w * 4 for w in widths) - sum(lengths) == sum(
        4 * s[i] - sum(s[i : i + 4]) for s in [sorted(lengths, reverse=True)] for i in range(0, 40, 4))
    assert widths[0] == max(lengths)

    stock = PtftTrainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
                        token_metrics=False, length_megabatch=None)
    stock_loader = stock.get_train_dataloader()
    assert isinstance(index_sampler(stock_loader), LengthGroupedSampler)
