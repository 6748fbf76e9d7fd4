"""Our chat SFT code against TRL's `SFTTrainer`, measured (issue 18: library or hand-written?).

Not part of the suite and not a dependency: `pip install trl` first. On the offline Qwen2 and
Llama 3 twins (`ptft_hf.models.twins`) it measures, per chat template:

- labels: which tokens each side trains on for multi-turn conversations with a system prompt
  (ours: `encode_conversation`; TRL: `SFTConfig(assistant_only_loss=True)`, whose `assistant_masks`
  decide the loss), whether the end-of-turn token is among them, and whether the two agree;
- preparation: seconds to tokenise and mask N conversations, each side on one process;
- training: real tokens per second, padding-free, the same model, data, batch and steps.

    python -m benchmarks.trl_sft --conversations 2000 --steps 40

Templates: the twins' own (ChatML and Llama 3 as the families ship them, less tool calling), and
TRL's bundled copies of Qwen2.5's and Llama 3.2's real Hub templates set on the same tokenizers.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("benchmarks.trl_sft")
IGNORE = -100


def conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = (rng.randrange(50) for _ in range(3))
        rows.append({"messages": [
            {"role": "system", "content": "You add numbers."},
            {"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)},
            {"role": "user", "content": f"And plus {c}?"}, {"role": "assistant", "content": f"{a + b + c}, then."}]})
    return rows


def ours(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[tuple[list[int], list[int]]]:
    from ptft_hf.data.chat import encode_conversation, end_of_turn_id

    eot = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer, None))
    out = []
    for row in rows:
        e = encode_conversation(row["messages"], tokenizer, None, max_length, end_of_turn=eot)
        out.append((e.input_ids, e.labels))
    return out


def trl_encoded(rows: list[dict[str, Any]], tokenizer: Any, model: Any, max_length: int | None, folder: Path,
                **config: Any) -> tuple[Any, list[tuple[list[int], list[int]]]]:
    """SFTTrainer's own dataset preparation (it folds `assistant_masks` into a `labels` column)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    settings = {"report_to": "none", "use_cpu": True, "save_strategy": "no", "disable_tqdm": True, **config}
    args = SFTConfig(output_dir=str(folder), assistant_only_loss=True, max_length=max_length, **settings)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    encoded = [(list(r["input_ids"]), list(r["labels"])) for r in trainer.train_dataset]  # masks folded into labels
    return trainer, encoded


def labelled(encoded: list[tuple[list[int], list[int]]]) -> list[list[int]]:
    return [[i for i, label in enumerate(labels) if label != IGNORE] for _, labels in encoded]


def _every_end_of_turn_labelled(encoded: list[tuple[list[int], list[int]]], eot: int) -> bool:
    """Each assistant turn's end-of-turn token carries a label: as many labelled end-of-turn
    tokens as assistant turns (two per conversation here)."""
    return all(sum(1 for t, label in zip(ids, labels) if t == eot and label != IGNORE) == 2 for ids, labels in encoded)


def compare_labels(family: str, template_name: str, template: str | None, twin: Path, rows: list, folder: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptft_hf.data.chat import end_of_turn_id

    tokenizer = AutoTokenizer.from_pretrained(twin)
    if template:
        tokenizer.chat_template = template
    eot = end_of_turn_id(tokenizer, None)
    mine = ours(rows, tokenizer, 512)
    result: dict[str, Any] = {"family": family, "template": template_name,
                              "ours_labels_end_of_turn": _every_end_of_turn_labelled(mine, eot)}
    result["ours_labelled_per_conversation"] = len(labelled(mine)[0])
    try:
        _, theirs = trl_encoded(rows, tokenizer, AutoModelForCausalLM.from_pretrained(twin), 512, folder / template_name)
    except Exception as err:  # what a user of SFTTrainer meets with this template
        result["trl"] = f"refused: {type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
        return result
    result["trl"] = "accepted"
    result["trl_labelled_per_conversation"] = len(labelled(theirs)[0])
    result["trl_labels_end_of_turn"] = _every_end_of_turn_labelled(theirs, eot)
    same_ids = [a[0] == b[0] for a, b in zip(mine, theirs)]
    result["same_token_ids"] = sum(same_ids) / len(rows)
    result["same_labels"] = sum(x == y for x, y in zip(labelled(mine), labelled(theirs))) / len(rows)
    return result


def speed(twin: Path, template: str, rows: list, steps: int, folder: Path) -> dict:
    """Preparation time and padding-free training throughput, ours against SFTTrainer's."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, TrainingArguments

    from ptft_hf.data.chat import end_of_turn_id
    from ptft_hf.objectives.sft import configure_for_packing, encode_sft
    from ptft_hf.training.trainer import PtftTrainer

    tokenizer = AutoTokenizer.from_pretrained(twin)
    tokenizer.chat_template = template
    eot = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer, None))
    common = dict(max_steps=steps, per_device_train_batch_size=16, learning_rate=1e-3, report_to="none", use_cpu=True,
                  save_strategy="no", disable_tqdm=True, logging_steps=steps, seed=0)

    start = time.perf_counter()
    encoded = encode_sft(Dataset.from_list(rows), tokenizer, None, 512, False, eot).remove_columns(["truncated", "dropped"])
    ours_prep = time.perf_counter() - start
    torch.manual_seed(0)
    model = configure_for_packing(AutoModelForCausalLM.from_pretrained(twin))
    trainer = PtftTrainer(model=model, args=TrainingArguments(output_dir=str(folder / "ours"), **common),
                          train_dataset=encoded, data_collator=DataCollatorWithFlattening(return_position_ids=True,
                                                                                         separator_id=IGNORE))
    start = time.perf_counter()
    ours_loss = trainer.train().training_loss
    ours_train = time.perf_counter() - start

    torch.manual_seed(0)
    trl_model = AutoModelForCausalLM.from_pretrained(twin)  # loaded outside the timed window, as ours is
    start = time.perf_counter()
    trl_trainer, theirs = trl_encoded(rows, tokenizer, trl_model, None, folder / "trl", padding_free=True, **common)
    trl_prep = time.perf_counter() - start  # SFTTrainer prepares its data set while it is built
    start = time.perf_counter()
    trl_loss = trl_trainer.train().training_loss
    trl_train = time.perf_counter() - start
    tokens = steps * 16 * (sum(len(i) for i, _ in theirs) / len(theirs))  # the same rows, in order, both sides
    return {"conversations": len(rows), "steps": steps, "batch": 16,
            "ours_prepare_s": round(ours_prep, 2), "trl_prepare_s": round(trl_prep, 2),
            "ours_tokens_per_s": round(tokens / ours_train), "trl_tokens_per_s": round(tokens / trl_train),
            "ours_train_loss": round(ours_loss, 4), "trl_train_loss": round(trl_loss, 4)}


def main(argv: list[str] | None = None) -> int:
    import trl

    from ptft_hf.data.builtin import iter_stdlib_docstrings
    from ptft_hf.models.twins import build_twin

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default="/tmp/trl_sft")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work)
    texts = [d for _, d in zip(range(500), iter_stdlib_docstrings())]
    rows = conversations(args.conversations)
    texts += [m["content"] for r in rows[:300] for m in r["messages"]]
    twins = {family: build_twin(family, work / family, texts) for family in ("qwen2", "llama3")}
    bundled = Path(trl.__file__).parent / "chat_templates"
    real = {"qwen2": ("qwen2_5 (TRL's copy of the Hub template)", (bundled / "qwen2_5.jinja").read_text()),
            "llama3": ("llama3_2 (TRL's copy of the Hub template)", (bundled / "llama3_2.jinja").read_text())}
    labels = []
    for family, twin in twins.items():
        labels.append(compare_labels(family, "the twin's own", None, twin, rows[:200], work))
        labels.append(compare_labels(family, real[family][0], real[family][1], twin, rows[:200], work))
    report = {"trl": trl.__version__, "labels": labels,
              "speed": speed(twins["qwen2"], real["qwen2"][1], rows, args.steps, work)}
    out = Path(args.out) / f"trl_sft_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
