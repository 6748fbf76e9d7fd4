"""W4, data preparation: tokenise and cut WikiText-2 (valid + test) into 256-token blocks.

ours:     ptft_hf.data.packing: `tokenize_dataset` (one batched, cached datasets.map keeping only
          int32 input_ids, EOS after each document) + `pack_blocks` (the whole column concatenated
          in Arrow/NumPy and cut once).
baseline: run_clm.py: map(tokenize_function) + map(group_texts) (Python lists, per map batch).

`cold` runs with a fresh datasets cache folder; `cached` is a second process on the same folder,
where datasets finds both maps by their fingerprints. Loading the text files into Arrow
(`load_dataset("text")`) is timed apart (`load_s`) and is the same for both arms; `process_s`
(tokenise + cut) is what MB/s is computed from, over the raw bytes of the text files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import configure, environment


def data_arm(spec: dict[str, Any], run_dir: Path, arm: str, phase: str, cache_dir: str) -> dict[str, Any]:
    configure(spec["threads"])
    import datasets
    from transformers import AutoTokenizer

    from benchmarks.w1_clm import group_texts_fn, tokenize_fn
    from ptft_hf.data.packing import pack_blocks, tokenize_dataset

    files = list(spec["files"]["w4_files"])
    block = spec["w4"]["block_size"]
    tokenizer = AutoTokenizer.from_pretrained(spec["bpe_dir"])
    raw_bytes = sum(os.path.getsize(f) for f in files)
    t0 = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=cache_dir)["train"]
    t1 = time.perf_counter()
    if arm == "ours":
        tokenized = tokenize_dataset(raw, tokenizer, add_eos=True)
        blocks, stats = pack_blocks(tokenized, block)
        n_blocks, n_tokens = stats.blocks, stats.tokens
    else:
        tokenized = raw.map(tokenize_fn(tokenizer), batched=True, remove_columns=raw.column_names,
                            desc="Running tokenizer on dataset")
        blocks = tokenized.map(group_texts_fn(block), batched=True, desc=f"Grouping texts in chunks of {block}")
        n_blocks = len(blocks)
        n_tokens = None  # run_clm does not count them; the remainder of every map batch is dropped
    t2 = time.perf_counter()
    process_s = t2 - t1
    return {
        "arm": arm, "phase": phase, "raw_bytes": raw_bytes, "documents": len(raw), "blocks": int(n_blocks),
        "tokens": None if n_tokens is None else int(n_tokens), "load_s": round(t1 - t0, 4),
        "process_s": round(process_s, 4), "mb_per_s": raw_bytes / 1e6 / process_s,
        "cache_files": len(tokenized.cache_files), "env": environment(),
    }
