from __future__ import annotations

import pytest

from ptft_hf.config.schema import DataConfig
from ptft_hf.data.sources import load_text_splits
from ptft_hf.errors import UserError


def _write(path, text: str, encoding: str = "utf-8"):
    path.write_text(text, encoding=encoding)
    return str(path)


def test_text_file_with_eval_file_and_empty_lines_dropped(tmp_path):
    train = _write(tmp_path / "train.txt", "first line\n\n  \nsecond line\n")
    valid = _write(tmp_path / "valid.txt", "held out\n")
    chosen = _write(tmp_path / "chosen.txt", "\nchoose on this\n")
    splits = load_text_splits(DataConfig(path=train, eval_path=valid, validation_path=chosen), seed=0)
    assert splits["train"]["text"] == ["first line", "second line"]
    assert splits["eval"]["text"] == ["held out"] and splits["validation"]["text"] == ["choose on this"]


def test_eval_is_carved_deterministically(tmp_path):
    train = _write(tmp_path / "t.txt", "\n".join(f"doc {i}" for i in range(100)))
    a = load_text_splits(DataConfig(path=train, eval_fraction=0.1), seed=3)
    b = load_text_splits(DataConfig(path=train, eval_fraction=0.1), seed=3)
    assert len(a["eval"]) == 10 and a["eval"]["text"] == b["eval"]["text"]
    assert set(a["eval"]["text"]).isdisjoint(a["train"]["text"])


def test_jsonl_column_is_renamed_to_text(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"body": "a b c", "id": 1}\n{"body": "d e", "id": 2}\n')
    splits = load_text_splits(DataConfig(path=path, text_column="body", eval_path=path, validation_path=path), seed=0)
    assert splits["train"].column_names == ["text"] and splits["train"]["text"] == ["a b c", "d e"]


def test_wrong_column_lists_the_available_ones(tmp_path):
    path = _write(tmp_path / "d.csv", "sentence,label\nhello,1\n")
    with pytest.raises(UserError) as err:
        load_text_splits(DataConfig(path=path, eval_path=path), seed=0)
    assert [str(p) for p in err.value.problems] == [
        "data.text_column: column 'text' not in the training data; set data.text_column= to one of: sentence, label"]


@pytest.mark.parametrize(
    "content,message",
    [
        (None, r"data.path: no file at"),
        ("", r"data.path: .* is empty"),
        ("\n \n\n", r"data.path: the training data holds no text"),
        (b"caf\xe9 latin-1\n", r"data.path: .*not UTF-8"),
    ],
    ids=["missing", "empty", "blank-lines", "not-utf8"],
)
def test_bad_files_name_the_field(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_text_splits(DataConfig(path=str(path)), seed=0)


def test_hub_code_path_on_a_local_folder_uses_its_splits(tmp_path):
    """`data.hub_id` goes through datasets.load_dataset(id); a local folder exercises that path offline."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (folder / "validation.jsonl").write_text('{"text": "three"}\n')
    (folder / "test.jsonl").write_text('{"text": "four"}\n')
    splits = load_text_splits(DataConfig(hub_id=str(folder), train_split="train", eval_split="test",
                                         validation_split="validation"), seed=0)
    assert splits["train"]["text"] == ["one", "two"] and splits["eval"]["text"] == ["four"]
    assert splits["validation"]["text"] == ["three"]


def test_missing_hub_split_lists_the_available_ones(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "one"}\n')
    with pytest.raises(UserError) as err:
        load_text_splits(DataConfig(hub_id=str(folder), eval_split="validation"), seed=0)
    [problem] = err.value.problems
    assert (problem.field, problem.what) == ("data.eval_split", "split 'validation' not found")
    assert problem.fix.startswith("use one of: train") and "validation" not in problem.fix.split(";")[0]


def test_wikitext2_preset_reads_the_local_files(compose_cfg):
    from omegaconf import OmegaConf

    from tests.conftest import shared_data

    folder = shared_data("wikitext-2")
    cfg = compose_cfg("data=wikitext2", f"data.path={folder / 'valid.txt'}", f"data.eval_path={folder / 'test.txt'}")
    splits = load_text_splits(OmegaConf.to_object(cfg).data, seed=0)
    # valid.txt trains, less the validation documents carved off it (5%, seeded); test.txt tests
    train_rows = [line for line in (folder / "valid.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert sorted(list(splits["train"]["text"]) + list(splits["validation"]["text"])) == sorted(train_rows)
    assert len(splits["validation"]) == -(-len(train_rows) * 5 // 100) and "= Homarus gammarus =" in train_rows[0]
    assert len(splits["train"]) > 2000 and len(splits["eval"]) > 2000


def test_tokenising_is_cached_by_fingerprint(tmp_path):
    from ptft_hf.data.packing import tokenize_dataset
    from ptft_hf.models.tokenizers import train_byte_bpe

    path = _write(tmp_path / "t.txt", "\n".join(f"line number {i} of the corpus" for i in range(50)))
    train = load_text_splits(DataConfig(path=path, eval_path=path), seed=0)["train"]
    tokenizer = train_byte_bpe(train["text"], vocab_size=300)
    first = tokenize_dataset(train, tokenizer, add_eos=True)
    second = tokenize_dataset(train, tokenizer, add_eos=True)
    assert first.cache_files and first.cache_files == second.cache_files
    assert first._fingerprint == second._fingerprint


def test_extra_training_text_is_mixed_in_across_formats(tmp_path):
    txt = _write(tmp_path / "general.txt", "general one\ngeneral two\n")
    csv = _write(tmp_path / "domain.csv", "text,category\ndomain one,a\ndomain two,b\n")
    cfg = DataConfig(path=txt, eval_path=txt, validation_path=txt, extra_train=[{"path": csv, "text_column": "text"}])
    splits = load_text_splits(cfg, seed=0)
    assert splits["train"]["text"] == ["general one", "general two", "domain one", "domain two"]


class _CountingSession:
    """Stands in for the network boundary only: datasets' HTTP session, recording the requests it is asked for."""

    def __init__(self):
        self.urls: list[str] = []

    def head(self, url, **kwargs):
        self.urls.append(url)


def test_local_files_load_without_the_download_count_request(tmp_path, monkeypatch):
    """datasets asks its S3 bucket to count each load_dataset("json"/"csv"/...) of local files (10 s of
    DNS failures in a BLiMP pass where the network is filtered); ptft_hf's local loads skip it, and a
    user's own HF_UPDATE_DOWNLOAD_COUNTS is left alone."""
    import datasets

    from ptft_hf.data.local_files import no_download_count_request

    session = _CountingSession()
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # the suite runs offline: as a user's online machine
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(datasets.load, "get_session", lambda: session)
    monkeypatch.delenv("HF_UPDATE_DOWNLOAD_COUNTS", raising=False)
    path = _write(tmp_path / "d.jsonl", '{"text": "a b c"}\n{"text": "d e"}\n')
    datasets.load_dataset("json", data_files={"train": path}, split="train")
    assert len(session.urls) == 1 and session.urls[0].endswith("json/json.py")  # what datasets does on its own
    splits = load_text_splits(DataConfig(path=path, eval_path=path, validation_path=path), seed=0)
    assert splits["train"]["text"] == ["a b c", "d e"] and len(session.urls) == 1  # three local loads, no request
    assert datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is True  # restored after each load
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "1")  # the user asked for the counts
    with no_download_count_request():
        datasets.load_dataset("json", data_files={"train": path}, split="train")
    assert len(session.urls) == 2
