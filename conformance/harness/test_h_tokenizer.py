"""muonlab.harness.tokenizer: offline gpt2 / bpe4096 loading, round trips, sha256 checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from muonlab.harness.data import default_data_dir
from muonlab.harness.tokenizer import Tokenizer, file_sha256, load_tokenizer, read_sha256sums

TEXTS = ["Hello world", "  indented\n\n\ttabs and émojis 🙂 — dashes", "", "a" * 300, "x = f(1, 2)  # note\r\n"]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        return default_data_dir()
    except FileNotFoundError:
        pytest.skip("shared data dir not available")


def test_gpt2_known_ids(data_dir: Path) -> None:
    tok = load_tokenizer("gpt2", data_dir)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("gpt2", 50257, 50256)
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    # special-token text in a document stays text
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")


@pytest.mark.parametrize("name", ["gpt2", "bpe4096"])
def test_round_trip_and_batch(data_dir: Path, name: str) -> None:
    tok = load_tokenizer(name, data_dir)
    assert isinstance(tok, Tokenizer)
    for t in TEXTS:
        ids = tok.encode(t)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == t
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.sha256 == read_sha256sums(data_dir / "SHA256SUMS")["gpt2.tiktoken" if name == "gpt2" else "bpe4096.json"]


def test_bpe4096_properties(data_dir: Path) -> None:
    tok = load_tokenizer("bpe4096", data_dir)
    assert tok.vocab_size == 4096 and 0 <= tok.eot_id < 4096
    assert len(tok.encode("Hello world")) > len(load_tokenizer("gpt2", data_dir).encode("Hello world"))


def test_sha256_mismatch_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    shutil.copy(data_dir / "gpt2.tiktoken", tmp_path / "gpt2.tiktoken")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  gpt2.tiktoken\n")
    with pytest.raises(ValueError, match="sha256"):
        load_tokenizer("gpt2", tmp_path)
    # without SHA256SUMS the pinned hash is used: a corrupted copy still fails
    (tmp_path / "SHA256SUMS").unlink()
    load_tokenizer("gpt2", tmp_path)
    with open(tmp_path / "gpt2.tiktoken", "ab") as f:
        f.write(b"\n")
    with pytest.raises(ValueError, match="sha256"):
        load_tokenizer("gpt2", tmp_path)
    assert file_sha256(tmp_path / "gpt2.tiktoken") != file_sha256(data_dir / "gpt2.tiktoken")


def test_bad_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        load_tokenizer("gpt4", tmp_path)
    with pytest.raises(FileNotFoundError, match="data-dir"):
        load_tokenizer("bpe4096", tmp_path)
