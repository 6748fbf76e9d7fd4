"""W8, a pretraining corpus larger than what should sit in memory: tokenise and pack with the
project's code (`tokenize_dataset` with `num_proc` into the datasets cache, then `pack_blocks`
into the on-disk block store), on a synthetic corpus written by the set-up process.

The corpus: every non-empty line of the shared real texts (WikiText-2 valid and test, the 47
licence texts, the 3,770 biomedical abstracts, ChemProt's sentences) as a document, written over
and over, each pass in a new seeded order, into 64 MB text files until the size is reached
(`w8.small_mb`, `w8.large_mb`). Real-looking text, so the tokenizer does real work; repeated, so
the figures are about volume, not vocabulary.

Arms (each in its own process): `small` (cold, the small corpus), `large` (cold), `large_cached`
(a second process on the large corpus's cache: datasets finds the tokenisation by its
fingerprint, `pack_blocks` its block store). Memory is the whole step's, the process and the
tokenising workers together, sampled every 250 ms as proportional set sizes (a page shared by
the forked workers counts once): resident (Pss, which counts the pages of memory-mapped Arrow
files the processes touched) and anonymous (Pss_Anon: what they had to own). The process starts
with torch and transformers imported (~0.5 GB), as a training run does.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import configure, environment

SHARD_BYTES = 64 * 2**20


def corpus_documents(shared: Path) -> list[str]:
    """Every non-empty line of the shared real texts, in a fixed order."""
    sources = [shared / "wikitext-2" / "valid.txt", shared / "wikitext-2" / "test.txt",
               shared / "medical" / "abstracts" / "abstracts.txt",
               *sorted((shared / "licenses").glob("*.txt")), *sorted((shared / "medical" / "chemprot").glob("*.csv"))]
    docs: list[str] = []
    for path in sources:
        if path.is_file():
            docs += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return docs


def write_corpus(folder: Path, documents: list[str], target_bytes: int, seed: int) -> list[str]:
    """Text files of about `target_bytes` in all: passes over `documents`, each shuffled anew."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    written, rng, handle = 0, random.Random(seed), None
    try:
        while written < target_bytes:
            order = documents[:]
            rng.shuffle(order)
            for doc in order:
                if handle is None or handle.tell() >= SHARD_BYTES:
                    if handle is not None:
                        handle.close()
                    files.append(str(folder / f"part-{len(files):04d}.txt"))
                    handle = open(files[-1], "w", encoding="utf-8")
                line = doc + "\n"
                handle.write(line)
                written += len(line.encode("utf-8"))
                if written >= target_bytes:
                    break
    finally:
        if handle is not None:
            handle.close()
    return files


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def _tree_memory(pid: int) -> tuple[float, float]:
    """(Pss, Pss_Anon) in MiB, summed over `pid` and its descendants. Proportional set sizes:
    a page shared by forked workers (copy-on-write, or a file both map) counts once in the sum,
    where VmRSS would count it in every process."""
    pss = anon = 0.0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "Pss":
                    pss += int(value.split()[0]) / 1024
                elif key == "Pss_Anon":
                    anon += int(value.split()[0]) / 1024
        except OSError:
            continue
    return pss, anon


class TreeMemorySampler(threading.Thread):
    """Peak of the summed Pss and Pss_Anon of this process and its children (datasets' workers),
    and what the resident pages at the Pss peak were (`peak_parts`: MiB by kind of mapping)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.peak_rss, self.peak_anon = interval, 0.0, 0.0
        self.peak_parts: dict[str, float] = {}
        self._halt = threading.Event()

    def _sample(self) -> None:
        rss, anon = _tree_memory(os.getpid())
        if rss > self.peak_rss:
            self.peak_parts = _tree_parts(os.getpid())
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample()
            time.sleep(self.interval)

    def stop(self) -> tuple[float, float]:
        self._halt.set()
        self.join()
        self._sample()
        return round(self.peak_rss, 1), round(self.peak_anon, 1)


def _mapping_kind(path: str) -> str:
    if not path or path.startswith("["):
        return "anonymous"
    if ".arrow" in path:
        return "arrow files"
    if ".so" in path:
        return "shared libraries"
    if path.startswith(("/dev/shm", "/memfd:")):
        return "shared memory"
    return "other files"


def _tree_parts(pid: int) -> dict[str, float]:
    """Pss in MiB by kind of mapping, summed over `pid` and its descendants."""
    parts: dict[str, float] = {}
    for member in _tree(pid):
        try:
            kind = "anonymous"
            for line in Path(f"/proc/{member}/smaps").read_text().splitlines():
                head = line.split(maxsplit=5)
                if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    kind = _mapping_kind(head[5] if len(head) > 5 else "")
                elif head[0] == "Pss:":
                    parts[kind] = parts.get(kind, 0.0) + int(head[1]) / 1024
        except OSError:
            continue
    return {kind: round(mib, 1) for kind, mib in sorted(parts.items())}


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def corpus_arm(spec: dict[str, Any], arm: str, cache: Path) -> dict[str, Any]:
    configure(spec["threads"])
    import datasets
    from transformers import AutoTokenizer

    from ptft_hf.data.packing import pack_blocks, tokenize_dataset
    from ptft_hf.data.sources import TEXT_WRITER_BATCH_ROWS

    s = spec["w8"]
    corpus = "small" if arm == "small" else "large"
    files = spec["w8_corpora"][corpus]
    tokenizer = AutoTokenizer.from_pretrained(spec["bpe_dir"])
    raw_bytes = sum(os.path.getsize(f) for f in files)
    sampler = TreeMemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=str(cache), num_proc=s["num_proc"],
                                writer_batch_size=TEXT_WRITER_BATCH_ROWS)["train"]  # as the project loads files
    t1 = time.perf_counter()
    tokenized = tokenize_dataset(raw, tokenizer, add_eos=True, num_proc=s["num_proc"])
    t2 = time.perf_counter()
    blocks, stats = pack_blocks(tokenized, s["block_size"])
    t3 = time.perf_counter()
    peak_rss, peak_anon = sampler.stop()
    return {
        "corpus": corpus, "raw_bytes": raw_bytes, "files": len(files), "documents": stats.documents,
        "tokens": stats.tokens, "blocks": stats.blocks, "tokens_dropped": stats.tokens_dropped,
        "load_s": round(t1 - t0, 2), "tokenize_s": round(t2 - t1, 2), "pack_s": round(t3 - t2, 2),
        "step_s": round(t3 - t0, 2), "mb_per_s": raw_bytes / 1e6 / (t3 - t1), "mb_per_s_with_load": raw_bytes / 1e6 / (t3 - t0),
        "peak_rss_mb": peak_rss, "peak_anon_mb": peak_anon, "peak_parts_mb": sampler.peak_parts, "cache_bytes": _folder_bytes(cache),
        "store_bytes": os.path.getsize(blocks.cache_files[0]["filename"]), "num_proc": s["num_proc"], "env": environment(),
    }


def stream_arm(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """`data.streaming=true` over the large corpus: `w8.stream_steps` steps of a small GPT-2 with
    the project's code path, blocks packed on the fly; the process's memory while it trains."""
    configure(spec["threads"])
    from omegaconf import OmegaConf

    from benchmarks.common import step_timer, timed_window
    from ptft_hf.api import compose
    from ptft_hf.data.sources import load_text_stream
    from ptft_hf.models.loading import load_tokenizer
    from ptft_hf.objectives import OBJECTIVES
    from ptft_hf.recipe import build_trainer
    from ptft_hf.strategies import get_strategy

    s = spec["w8"]
    folder = Path(spec["w8_corpora"]["large"][0]).parent
    overrides = ["model=tiny_gpt2", "model.config.n_layer=2", "model.config.n_embd=128", "model.config.n_head=2",
                 "model.tokenizer.train=false", f"model.tokenizer.name_or_path={spec['bpe_dir']}",
                 "data=text_files", f"data.path={folder}", "data.streaming=true", "objective=clm",
                 f"objective.block_size={s['stream_block_size']}", f"trainer.max_steps={s['stream_steps']}",
                 "trainer.per_device_train_batch_size=8", "trainer.eval_strategy=no", "trainer.save_strategy=steps",
                 f"trainer.save_steps={max(1, s['stream_steps'] // 2)}",
                 "trainer.disable_tqdm=true", f"seed={spec['seed']}"]
    sampler = TreeMemorySampler()
    sampler.start()
    conf = OmegaConf.to_object(compose(*overrides).cfg)
    splits = load_text_stream(conf.data, conf.seed)
    tokenizer = load_tokenizer(conf.model)
    prepared = OBJECTIVES["clm"](conf, splits, tokenizer, get_strategy(conf.strategy), {})
    timer = step_timer()
    trainer = build_trainer(conf, run_dir, tokenizer, prepared, [timer])
    trainer.train()
    peak_pss, peak_anon = sampler.stop()
    steps, seconds = timed_window(timer, 5)
    positions = sorted(run_dir.glob("**/checkpoint-*/stream_state-rank0.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return {"corpus_bytes": sum(os.path.getsize(f) for f in spec["w8_corpora"]["large"]), "steps": len(timer.ends),
            "checkpoint_position": json.loads(positions[-1].read_text())["position"] if positions else None,
            "tokens_per_s": steps * 8 * s["stream_block_size"] / seconds, "blocks_read": prepared.train_dataset.blocks_read,
            "peak_rss_mb": peak_pss, "peak_anon_mb": peak_anon, "overrides": overrides, "env": environment()}
