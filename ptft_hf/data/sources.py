"""Raw text sources: local files, Hub data sets and builtin corpora, as train/eval splits.

Everything goes through `datasets.load_dataset`, so Hub ids and local files share one code path
and one cache. The result always has a `text` column (or the columns an objective asks for).
The texts of corpora mixed by token share come beside the splits (`TextSplits.mixed`), with the
run's `Mixture` (`ptft_hf.data.mixture`).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.builtin import BUILTIN_CORPORA, builtin_corpus_file
from ptft_hf.data.local_files import load_local_files
from ptft_hf.data.mixture import Mixture, extra_corpora
from ptft_hf.data.validation import carve_validation
from ptft_hf.errors import UserError

log = logging.getLogger(__name__)

_FORMAT_BY_SUFFIX = {
    ".txt": "text", ".text": "text", ".md": "text", ".raw": "text",
    ".jsonl": "json", ".json": "json",
    ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet",
}


def resolve_files(field: str, path: str) -> list[str]:
    """Expand a file, glob or folder into a sorted list of files, or explain what is missing."""
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        files = sorted(
            str(p) for p in Path(expanded).rglob("*") if p.is_file() and p.suffix in _FORMAT_BY_SUFFIX
        )
    elif any(ch in expanded for ch in "*?["):
        files = sorted(glob.glob(expanded, recursive=True))
    else:
        files = [expanded] if os.path.isfile(expanded) else []
    if not files:
        raise UserError.of(
            field, f"no file at '{path}' (looked from {os.getcwd()})",
            f"point {field}= at an existing file, glob or folder",
        )
    for f in files:
        _check_readable(field, f)
    return files


def _check_readable(field: str, path: str) -> None:
    """An empty or unreadable file fails here, with the file named, not deep inside a loader."""
    try:
        with open(path, "rb") as handle:
            empty = handle.read(1) == b""
    except OSError as err:
        raise UserError.of(field, f"'{path}' cannot be read ({err.strerror or type(err).__name__})",
                           f"fix its permissions (e.g. chmod u+r '{path}') or point {field}= at a readable file") from err
    if empty:
        raise UserError.of(field, f"'{path}' is empty", f"point {field}= at a file with text in it")


def infer_format(field: str, files: list[str], declared: str | None) -> str:
    if declared:
        return declared
    suffix = Path(files[0]).suffix.lower()
    if suffix not in _FORMAT_BY_SUFFIX:
        raise UserError.of(
            field, f"cannot tell the format of '{files[0]}'",
            "set data.format= to one of text, json, csv, parquet",
        )
    return _FORMAT_BY_SUFFIX[suffix]


# rows per record batch of a loaded file's Arrow cache (datasets writes 1,000): every open of the
# cache reads each batch's header, and the kernel maps the pages around each one it touches, so a
# corpus of millions of short documents would leave hundreds of MB of the file resident. The
# loaders hand over tables of about 10 MB, and with this bound each becomes one record batch.
TEXT_WRITER_BATCH_ROWS = 1_000_000


def _load_files(field: str, path: str, cfg: DataConfig) -> Dataset:
    files = resolve_files(field, path)
    fmt = infer_format(field, files, cfg.format)
    kwargs: dict[str, Any] = {"writer_batch_size": TEXT_WRITER_BATCH_ROWS}
    if fmt == "text":
        kwargs["sample_by"] = cfg.sample_by
    if fmt == "csv" and files[0].endswith(".tsv"):
        kwargs["delimiter"] = "\t"
    try:
        return load_local_files(fmt, files, **kwargs)
    except UnicodeDecodeError as err:
        raise _not_utf8(field, path, files) from err
    except (datasets.exceptions.DatasetGenerationError, ValueError) as err:
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError):
            raise _not_utf8(field, path, files) from err
        raise UserError.of(
            field, f"'{path}' could not be read as {fmt}: {str(cause).splitlines()[0]}",
            "check the file or set data.format=",
        ) from err


def _not_utf8(field: str, path: str, files: list[str]) -> UserError:
    """Name the first file that is not UTF-8 and where (read again, on the error path only)."""
    for f in files:
        try:
            Path(f).read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            return UserError.of(field, f"'{f}' is not UTF-8 text ({err.reason} at byte {err.start})",
                                f"convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8 '{f}' > fixed.txt)")
    return UserError.of(field, f"a file under '{path}' is not UTF-8 text", "convert it to UTF-8 (e.g. iconv -t utf-8)")


def _load_hub(cfg: DataConfig) -> DatasetDict:
    log.info("loading data set %s (%s) with datasets.load_dataset", cfg.hub_id, cfg.hub_config)
    loaded = datasets.load_dataset(cfg.hub_id, cfg.hub_config)
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict({cfg.train_split: loaded})
    return loaded


def _pick_split(loaded: DatasetDict, split: str, field: str) -> Dataset:
    if split not in loaded:
        raise UserError.of(field, f"split '{split}' not found", f"use one of: {', '.join(loaded)}")
    return loaded[split]


def _labels_as_strings(ds: Dataset, column: str) -> Dataset:
    """Hub data sets often store labels as ClassLabel ids: turn them into their names."""
    feature = ds.features[column]
    if hasattr(feature, "int2str"):
        return ds.map(lambda b: {column: feature.int2str(b[column])}, batched=True,
                      features=ds.features.copy() | {column: datasets.Value("string")}, desc="label names")
    if feature.dtype != "string":
        return ds.cast_column(column, datasets.Value("string"))
    return ds


def _select_chat(ds: Dataset, cfg: DataConfig, field: str) -> Dataset:
    """SFT rows in any chat format (`data.chat_format`, `data.fields.*`; `ptft_hf.data.chat_formats`):
    a `messages` column, or `prompt` and `response` columns."""
    from ptft_hf.data.chat_formats import select_chat

    return select_chat(ds, cfg, field)


def _select_text(ds: Dataset, cfg: DataConfig, field: str, text_column: str | None = None) -> Dataset:
    text_column = text_column or cfg.text_column
    wanted = [(text_column, "text", "data.text_column")]
    if cfg.label_column:
        wanted.append((cfg.label_column, "label", "data.label_column"))
    for column, _, key in wanted:
        if column not in ds.column_names:
            raise UserError.of(key, f"column '{column}' not in {field}", f"set {key}= to one of: {', '.join(ds.column_names)}")
    if cfg.label_column:
        ds = _labels_as_strings(ds, cfg.label_column)
    ds = ds.select_columns([c for c, _, _ in wanted])
    ds = ds.rename_columns({c: new for c, new, _ in wanted if c != new})
    return ds.filter(
        lambda batch: [t is not None and t.strip() != "" for t in batch["text"]],
        batched=True, desc="dropping empty texts",
    )


@dataclass(frozen=True)
class TextSplits(Mapping):
    """A run's texts: the `train`, `eval` (test: scored once, after training) and `validation`
    (evaluated during training) splits, a mapping of the three, and the texts of the corpora its
    `mixture` mixes by token share, by name (`mixed`), kept apart until they are packed. `train`
    (and `mixed`) are streams with data.streaming."""

    train: Any  # datasets.Dataset, or an IterableDataset when streamed
    eval: Dataset
    mixture: Mixture
    mixed: dict[str, Any]  # name -> texts (a stream with data.streaming), one per mixture entry
    validation: Dataset | None = None  # None only where built by hand without one (the objectives then evaluate on eval)

    def __getitem__(self, split: str) -> Any:
        if split in self._names():
            return getattr(self, split)
        raise KeyError(split)

    def _names(self) -> tuple[str, ...]:
        return ("train", "eval") if self.validation is None else ("train", "eval", "validation")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def mixed_texts(self) -> dict[str, Any]:
        """The texts of every corpus the mixture names, the main one first (its training split)."""
        return {self.mixture.main: self.train, **{entry.name: self.mixed[entry.name] for entry in self.mixture.entries}}

    def sizes(self) -> dict[str, int | None]:
        """Documents in each split (train: None when streamed)."""
        return {"train": len(self.train) if isinstance(self.train, Dataset) else None, "validation":
                None if self.validation is None else len(self.validation), "test": len(self.eval)}


def load_text_splits(cfg: DataConfig, seed: int, chat: bool = False) -> TextSplits:
    """Load the configured source as `train`, `eval` (test) and `validation` splits, each with `text`
    (and `label` when `data.label_column` is set), or with chat columns when `chat` (SFT); weighted
    extra corpora beside them (`TextSplits.mixed`, `TextSplits.mixture`).

    The test split is data.eval_path, else data.eval_split, else data.eval_fraction carved off the
    training rows (as before validation splits existed); the validation split is data.validation_path,
    else data.validation_split, else data.validation_fraction carved off the training rows left
    (`carve_validation`: seeded, stratified by label). The three are disjoint when carved."""
    select = (lambda ds, _cfg, field: _select_chat(ds, _cfg, field)) if chat else _select_text
    eval_ds: Dataset | None = None
    validation_ds: Dataset | None = None
    if cfg.path:
        train_ds = _load_files("data.path", cfg.path, cfg)
    elif cfg.builtin:
        if cfg.builtin not in BUILTIN_CORPORA:
            raise UserError.of(
                "data.builtin", f"no builtin corpus '{cfg.builtin}'", f"use one of: {', '.join(BUILTIN_CORPORA)}"
            )
        train_ds = load_local_files("json", str(builtin_corpus_file(cfg.builtin)))
    elif cfg.hub_id:
        loaded = _load_hub(cfg)
        train_ds = _pick_split(loaded, cfg.train_split, "data.train_split")
        if cfg.eval_split and not cfg.eval_path:
            eval_ds = _pick_split(loaded, cfg.eval_split, "data.eval_split")
        if cfg.validation_split and not cfg.validation_path:
            validation_ds = select(_pick_split(loaded, cfg.validation_split, "data.validation_split"), cfg, "the validation data")
    else:
        raise UserError.of("data.path", "no data source is set", "set data.path=FILE, data.hub_id=ID or pick data=builtin_docs")

    train_ds = select(train_ds, cfg, "the training data")
    weighted: dict[str, Dataset] = {}  # corpora mixed by token share (`weight`), kept apart until packed
    for extra in extra_corpora(cfg):
        field = f"{extra.field}.path"
        extra_ds = _select_text(_load_files(field, extra.path, extra.data_config()), cfg, field, extra.text_column)
        extra_ds = extra_ds.cast(train_ds.features)  # e.g. large_string -> string
        if extra.weight is not None:
            weighted[extra.name] = extra_ds
            log.info("corpus %s: %d training documents, %.1f%% of the training tokens", extra.name,
                     len(extra_ds), 100 * extra.weight)
            continue
        # upsample a small domain corpus against a large general one
        train_ds = datasets.concatenate_datasets([train_ds] + [extra_ds] * extra.repeat)
        log.info("mixed in %d training documents from %s%s", len(extra_ds), extra.path, f" x{extra.repeat}" if extra.repeat > 1 else "")
    if cfg.eval_path:
        eval_ds = select(_load_files("data.eval_path", cfg.eval_path, cfg), cfg, "the eval data")
    elif eval_ds is not None:
        eval_ds = select(eval_ds, cfg, "the eval data")

    if len(train_ds) == 0:
        raise UserError.of("data.path", "the training data holds no text (every row is empty)", "point it at a file with text in it")
    if eval_ds is None:
        if not 0.0 < cfg.eval_fraction < 1.0 or len(train_ds) < 2:
            raise UserError.of(
                "data.eval_fraction", f"cannot carve an eval split ({cfg.eval_fraction} of {len(train_ds)} rows)",
                "set data.eval_path= or a fraction between 0 and 1 on at least 2 documents",
            )
        carved = train_ds.train_test_split(test_size=cfg.eval_fraction, seed=seed, shuffle=True)
        train_ds, eval_ds = carved["train"], carved["test"]
        log.info("carved %d eval documents off %d (seed %d)", len(eval_ds), len(train_ds) + len(eval_ds), seed)
    if len(eval_ds) == 0:
        raise UserError.of("data.eval_path", "the eval data holds no text", "point it at a file with text in it")
    if cfg.validation_path:  # a given validation file wins over the Hub split and the carve
        validation_ds = select(_load_files("data.validation_path", cfg.validation_path, cfg), cfg, "the validation data")
    if validation_ds is None:  # off the training rows the test carve left: never a test row
        train_ds, validation_ds = carve_validation(train_ds, cfg.validation_fraction, seed)
        log.info("carved %d validation documents off %d training documents (seed %d)", len(validation_ds),
                 len(train_ds) + len(validation_ds), seed)
    if len(validation_ds) == 0:
        raise UserError.of("data.validation_path", "the validation data holds no text", "point it at a file with text in it")

    # a seeded random subset, not the head: files are often sorted (by label, by date)
    if cfg.max_train_samples and cfg.max_train_samples < len(train_ds):
        train_ds = train_ds.shuffle(seed=seed).select(range(cfg.max_train_samples)).flatten_indices()
    eval_ds, validation_ds = (_at_most(ds, cfg.max_eval_samples, seed) for ds in (eval_ds, validation_ds))
    return TextSplits(train_ds, eval_ds, Mixture.from_config(cfg), weighted, validation_ds)


def _at_most(ds: Dataset, rows: int | None, seed: int) -> Dataset:
    """A seeded random `rows` of `ds` (data.max_eval_samples), or all of it."""
    if rows and rows < len(ds):
        return ds.shuffle(seed=seed).select(range(rows)).flatten_indices()
    return ds


def load_text_stream(cfg: DataConfig, seed: int) -> TextSplits:
    """`data.streaming=true`: the training documents as a `datasets.IterableDataset` (local files,
    a builtin corpus or a Hub data set, read lazily) with a `text` column, and a small
    materialised eval (test) split: data.eval_path / data.eval_split, else the stream's first
    `data.stream_eval_documents` documents; and a validation split: data.validation_path /
    data.validation_split, else the next `data.stream_eval_documents` (training skips both). Weighted
    `data.extra_train` corpora come as streams too (`TextSplits.mixed`)."""
    if cfg.path:
        stream = _file_stream("data.path", cfg.path, cfg)
    elif cfg.builtin:
        if cfg.builtin not in BUILTIN_CORPORA:
            raise UserError.of("data.builtin", f"no builtin corpus '{cfg.builtin}'", f"use one of: {', '.join(BUILTIN_CORPORA)}")
        stream = load_local_files("json", str(builtin_corpus_file(cfg.builtin)), streaming=True)
    elif cfg.hub_id:
        log.info("streaming data set %s (%s) with datasets.load_dataset(streaming=True)", cfg.hub_id, cfg.hub_config)
        stream = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.train_split, streaming=True)
    else:
        raise UserError.of("data.path", "no data source is set", "set data.path=FILE, data.hub_id=ID or pick data=builtin_docs")
    stream = _text_stream(stream, cfg.text_column, "data.text_column")
    if cfg.eval_path:
        eval_ds = _select_text(_load_files("data.eval_path", cfg.eval_path, cfg), cfg, "the eval data")
    elif cfg.hub_id and cfg.eval_split:
        eval_ds = _select_text(datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.eval_split), cfg, "the eval data")
    else:
        eval_ds, stream = _stream_head(stream, cfg.stream_eval_documents, "test")
    if cfg.validation_path:
        validation_ds = _select_text(_load_files("data.validation_path", cfg.validation_path, cfg), cfg, "the validation data")
    elif cfg.hub_id and cfg.validation_split:
        validation_ds = _select_text(datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.validation_split), cfg,
                                     "the validation data")
    else:  # the next documents of the stream (after the test ones, when the stream gave those)
        validation_ds, stream = _stream_head(stream, cfg.stream_eval_documents, "validation")
    eval_ds, validation_ds = (_at_most(ds, cfg.max_eval_samples, seed) for ds in (eval_ds, validation_ds))
    if cfg.max_train_samples:
        stream = stream.take(cfg.max_train_samples)
    mixture = Mixture.from_config(cfg)  # validation has made sure every data.extra_train entry has a weight
    mixed: dict[str, Any] = {}
    for entry in mixture.entries:
        extra = entry.source
        mixed[entry.name] = _text_stream(_file_stream(f"{extra.field}.path", extra.path, extra.data_config()), extra.text_column,
                                         f"{extra.field}.text_column")
        log.info("corpus %s streamed for %.1f%% of the training tokens", entry.name, 100 * entry.weight)
    return TextSplits(stream, eval_ds, mixture, mixed, validation_ds)


def _stream_head(stream: Any, documents: int, role: str) -> tuple[Dataset, Any]:
    """The stream's first `documents` documents as the `role` split, and the stream without them."""
    head = list(stream.take(documents))
    if not head:
        raise UserError.of("data.path", "the training stream holds no text", "point it at a file with text in it")
    log.info("the stream's next %d documents are the %s split; training skips them", len(head), role)
    return Dataset.from_list(head), stream.skip(len(head))


def _file_stream(field: str, path: str, cfg: DataConfig) -> Any:
    files = resolve_files(field, path)
    fmt = infer_format(field, files, cfg.format)
    kwargs: dict[str, Any] = {"sample_by": cfg.sample_by} if fmt == "text" else {}
    return load_local_files(fmt, files, streaming=True, **kwargs)


def _text_stream(stream: Any, text_column: str, field: str) -> Any:
    """The stream's `text_column` as `text`, without empty documents."""
    if text_column not in (stream.column_names or [text_column]):
        raise UserError.of(field, f"column '{text_column}' not in the training data",
                           f"set {field}= to one of: {', '.join(stream.column_names or [])}")
    stream = stream.select_columns([text_column])
    if text_column != "text":
        stream = stream.rename_column(text_column, "text")
    return stream.filter(lambda row: row["text"] is not None and row["text"].strip() != "")


def add_replay(conf: PtftConfig, splits: TextSplits, references: Mapping[str, DataConfig]) -> TextSplits:
    """Mix `data.replay` of the training tokens from the base stage's own training data (the
    documents it trained on, never its eval ones) into this stage's: an entry of kind `replay`
    in the run's mixture, named `replay_<data>`, counted in `data_mixture` like any other.
    The config is left as it is."""
    if len(references) != 1:
        raise UserError.of("data.replay", "needs the base stage's data, and this run has no base stage",
                           "set it on a pipeline stage with init_from, or mix a corpus with data.extra_train (weight)")
    (base_name, base_data), = references.items()
    mixture = splits.mixture.with_replay(base_name, base_data, conf.data.replay)
    replayed = mixture.entries[-1]
    base_train = load_text_splits(base_data, conf.seed).train.select_columns(["text"])
    texts = base_train.cast(splits.train.select_columns(["text"]).features)
    log.info("replay: %.0f%% of the training tokens from %s's %d training documents", 100 * replayed.weight, base_name,
             len(base_train))
    return dataclasses.replace(splits, mixture=mixture, mixed={**splits.mixed, replayed.name: texts})
