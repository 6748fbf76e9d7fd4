"""The set-up arm, run once before any timed arm: data files (subsets in smoke mode), the shared
tokenizers, the held-out blocks both W1 (and W6) arms are scored on, and the W3 and W7 checkpoints.

Both arms of a workload load the same tokenizer folder, so they see identical tokens; the
tokenizers are trained with the project's own trainers (byte-level BPE, WordPiece).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any


def _head_lines(src: Path, dst: Path, max_bytes: int) -> None:
    """The first whole lines of `src` up to about `max_bytes`."""
    kept, size = [], 0
    with src.open(encoding="utf-8") as f:
        for line in f:
            if size + len(line.encode()) > max_bytes and kept:
                break
            kept.append(line)
            size += len(line.encode())
    dst.write_text("".join(kept), encoding="utf-8")


def _csv_subset(train_src: Path, test_src: Path, train_dst: Path, test_dst: Path, every: int) -> None:
    """Every `every`-th row of train, and of test those rows whose label train covers."""
    def rows(path: Path) -> tuple[list[str], list[list[str]]]:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            return header, list(reader)

    header, train = rows(train_src)
    _, test = rows(test_src)
    train = train[::every]
    labels = {r[1] for r in train}
    test = [r for r in test[::every] if r[1] in labels]
    for path, body in ((train_dst, train), (test_dst, test)):
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(body)


def _data_files(spec: dict[str, Any]) -> dict[str, str]:
    shared = Path(spec["shared_data"])
    wiki, bank = shared / "wikitext-2", shared / "banking77"
    work = Path(spec["workdir"]) / "data"
    work.mkdir(parents=True, exist_ok=True)
    files = {"wikitext_train": wiki / "valid.txt", "wikitext_eval": wiki / "test.txt",
             "banking_train": bank / "train.csv", "banking_test": bank / "test.csv"}
    if spec["smoke"]:
        sub = {k: work / f"smoke_{Path(v).name}" for k, v in files.items()}
        _head_lines(files["wikitext_train"], sub["wikitext_train"], 40_000)
        _head_lines(files["wikitext_eval"], sub["wikitext_eval"], 20_000)
        _csv_subset(files["banking_train"], files["banking_test"], sub["banking_train"], sub["banking_test"], 20)
        files = sub
    w3_text = work / "w3_text.txt"  # a little text: W3 measures one step, not the data
    _head_lines(Path(files["wikitext_train"]), w3_text, 60_000)
    out = {k: str(v) for k, v in files.items()}
    out["w3_text"] = str(w3_text)
    out["w4_files"] = [out["wikitext_train"], out["wikitext_eval"]]
    return out


def _nonempty_lines(path: str) -> list[str]:
    """The texts the project trains a tokenizer on: the text loader's lines, empty ones dropped."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _eval_blocks(spec: dict[str, Any], files: dict[str, str], tokenizer: Any, out_dir: Path,
                 workload: str = "w1") -> dict[str, Any]:
    """Held-out blocks for W1 (or W6), cut two ways from the eval text: `run_clm.py`'s (tokenise each
    line, concatenate, cut) and the project's packing (EOS after each non-empty line). Both arms'
    models are scored on the same first `eval_blocks` blocks of each."""
    import datasets
    import numpy as np

    from benchmarks.w1_clm import group_texts_fn, spec_key, tokenize_fn
    from ptft_hf.data.packing import block_array, pack_blocks, tokenize_dataset

    s = spec[workload]
    raw = datasets.load_dataset("text", data_files={"eval": [files["wikitext_eval"]]})["eval"]
    plain = raw.map(tokenize_fn(tokenizer), batched=True, remove_columns=raw.column_names)
    plain = plain.map(group_texts_fn(s["block_size"]), batched=True)
    plain_blocks = np.asarray(plain["input_ids"][: s["eval_blocks"]], dtype=np.int64)
    nonempty = raw.filter(lambda b: [t.strip() != "" for t in b["text"]], batched=True)
    packed, _ = pack_blocks(tokenize_dataset(nonempty, tokenizer, add_eos=True), s["block_size"])
    packed_blocks = block_array(packed)[: s["eval_blocks"]].astype(np.int64)
    paths = {"plain": out_dir / f"{workload}_eval_plain.npy", "packed": out_dir / f"{workload}_eval_packed.npy"}
    np.save(paths["plain"], plain_blocks)
    np.save(paths["packed"], packed_blocks)
    return {spec_key(workload, "eval_blocks_plain"): str(paths["plain"]), spec_key(workload, "eval_blocks_packed"): str(paths["packed"]),
            spec_key(workload, "eval_blocks"): [int(plain_blocks.shape[0]), int(packed_blocks.shape[0])]}


def padded_bpe(texts: list[str], vocab_size: int) -> tuple[Any, int]:
    """A byte-level BPE learned from `texts` (as large as they allow), then padded with unused
    tokens to exactly `vocab_size` (W6: GPT-2's 50,257, whose embedding and output matmul are a
    third of GPT-2 small's parameters; WikiText-2's validation text gives ~14.6k merges).
    Returns the tokenizer and its learned size."""
    from ptft_hf.models.tokenizers import train_byte_bpe

    tokenizer = train_byte_bpe(texts, vocab_size, 2)
    learned = len(tokenizer)
    if learned < vocab_size:
        tokenizer.add_tokens([f"<|unused_{i}|>" for i in range(vocab_size - learned)])
    return tokenizer, learned


def _w3_checkpoint(spec: dict[str, Any], tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    """A GPT-2 built from a config (no download) saved as safetensors, so the QLoRA arm can load
    it straight into 4-bit without first holding the fp32 weights in its own memory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    s = spec["w3"]
    torch.manual_seed(spec["seed"])
    config = GPT2Config(n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"], n_positions=s["n_positions"],
                        vocab_size=s["vocab_size"], bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    params = sum(p.numel() for p in model.parameters())
    model_dir = out_dir / "w3_model"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return {"w3_model_dir": str(model_dir), "w3_parameters": int(params),
            "w3_checkpoint_bytes": sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))}


def setup_arm(spec: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.common import configure, environment
    from ptft_hf.models.tokenizers import train_byte_bpe, train_wordpiece

    configure(spec["threads"])
    started = time.perf_counter()
    out_dir = Path(spec["workdir"])
    files = _data_files(spec)
    result: dict[str, Any] = {"files": files}
    workloads = set(spec["workloads"])
    if workloads & {"w1", "w3", "w4", "w5", "w8"}:
        bpe = train_byte_bpe(_nonempty_lines(files["wikitext_train"]), spec["w1"]["vocab_size"], 2)
        bpe.save_pretrained(str(out_dir / "tok_bpe"))
        result["bpe_dir"] = str(out_dir / "tok_bpe")
        result["bpe_vocab"] = len(bpe)
        if "w1" in workloads:
            result.update(_eval_blocks(spec, files, bpe, out_dir))
        if "w3" in workloads:
            result.update(_w3_checkpoint(spec, bpe, out_dir))
    if "w6" in workloads:
        w6_bpe, learned = padded_bpe(_nonempty_lines(files["wikitext_train"]), spec["w6"]["vocab_size"])
        w6_bpe.save_pretrained(str(out_dir / "tok_w6"))
        result.update(w6_bpe_dir=str(out_dir / "tok_w6"), w6_bpe_vocab=len(w6_bpe), w6_bpe_learned=learned)
        result.update(_eval_blocks(spec, files, w6_bpe, out_dir, "w6"))
    if "w7" in workloads:
        from benchmarks.w7_sft import build_checkpoint

        result.update(build_checkpoint(spec, files, out_dir))
    if "w9" in workloads:
        from benchmarks.w9_sizes import build_checkpoints

        result.update(build_checkpoints(spec, files, out_dir))
    if "w8" in workloads:
        from benchmarks.w8_corpus import corpus_documents, write_corpus

        documents = corpus_documents(Path(spec["shared_data"]))
        result["w8_corpora"] = {name: write_corpus(out_dir / "w8_corpus" / name, documents, int(spec["w8"][f"{name}_mb"] * 1e6),
                                                   spec["seed"]) for name in ("small", "large")}
    if "w2" in workloads:
        with open(files["banking_train"], encoding="utf-8", newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        wordpiece = train_wordpiece(texts, spec["w2"]["vocab_size"], 2)
        wordpiece.save_pretrained(str(out_dir / "tok_wordpiece"))
        result["wordpiece_dir"] = str(out_dir / "tok_wordpiece")
        result["wordpiece_vocab"] = len(wordpiece)
    result["setup_s"] = round(time.perf_counter() - started, 2)
    result["env"] = environment()
    return result
