"""Loading local files with `datasets.load_dataset` without its download-count request."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

ENV_VAR = "HF_UPDATE_DOWNLOAD_COUNTS"


@contextmanager
def no_download_count_request() -> Iterator[None]:
    """`datasets.load_dataset("json" | "csv" | "text" | ..., data_files=...)` first sends a HEAD request
    to the datasets S3 bucket to count a use of the packaged builder (`datasets.load.increase_load_count`),
    even for local files. Where the network is filtered, each request waits for its DNS lookup to fail
    (0.3 s on our machines, up to the request's 3 s timeout): 10 s of each process of a BLiMP pass,
    which reads 67 files. Inside this block the request is skipped, unless the user set
    HF_UPDATE_DOWNLOAD_COUNTS themselves; Hub data sets loaded elsewhere are counted as before."""
    import datasets

    if ENV_VAR in os.environ:
        yield
        return
    before = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = before


def load_local_files(fmt: str, files: str | list[str], **kwargs: Any) -> Any:
    """`datasets.load_dataset(fmt, data_files={"train": files}, split="train", **kwargs)` without the
    download-count request (streaming too, with `streaming=True`)."""
    import datasets

    with no_download_count_request():
        return datasets.load_dataset(fmt, data_files={"train": files}, split="train", **kwargs)
