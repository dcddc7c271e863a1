"""muonlab.harness.data: cached token shards, per-source validation split, deterministic batches."""

from __future__ import annotations

import itertools
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch

from muonlab.harness.data import TokenShards, default_data_dir, iter_source_files, prepare_tokens


class ByteTok:
    """Byte-level tokenizer (id = byte value, eot = 256) that counts its encode calls."""

    name = "bytes"
    vocab_size = 257
    eot_id = 256
    sha256 = "b" * 64

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self.calls += 1
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode()


def _write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture()
def sources(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "\n", "epsilon", "zeta"]
    d = tmp_path / "docs"
    _write(d / "b" / "two.md", " ".join(rng.choice(words, 3000)))
    _write(d / "a.txt", " ".join(rng.choice(words, 2000)))
    _write(d / "skip.bin", "not text")
    single = _write(tmp_path / "single.rst", "".join(rng.choice(list("abcdefgh \n"), 20000)))
    return [d, single]


def _expected_tokens(source: Path) -> list[int]:
    out: list[int] = []
    for f in iter_source_files(source):
        out += [*list(f.read_bytes()), 256]
    return out


def test_directory_files_sorted_and_filtered(sources: list[Path]) -> None:
    assert [f.name for f in iter_source_files(sources[0])] == ["a.txt", "two.md"]


def test_prepare_writes_per_source_val_split_and_caches(sources: list[Path], tmp_path: Path) -> None:
    tok = ByteTok()
    sh = prepare_tokens(sources, tok, tmp_path / "cache", val_fraction=0.1, progress=False)
    calls = tok.calls
    assert calls > 0
    exp = [_expected_tokens(s) for s in sources]
    cuts = [len(e) - int(len(e) * 0.1) for e in exp]
    assert sh.train.dtype == np.uint16 and sh.val.dtype == np.uint16
    assert sh.train.tolist() == exp[0][: cuts[0]] + exp[1][: cuts[1]]
    assert sh.val.tolist() == exp[0][cuts[0] :] + exp[1][cuts[1] :]
    meta = json.loads((sh.path / "meta.json").read_text())
    assert meta == sh.meta
    assert meta["tokenizer"]["sha256"] == tok.sha256 and len(meta["sources"]) == 2
    assert [s["val_tokens"] for s in meta["sources"]] == [len(e) - c for e, c in zip(exp, cuts, strict=True)]
    # second call: cached, no tokenization
    sh2 = prepare_tokens(sources, tok, tmp_path / "cache", val_fraction=0.1, progress=False)
    assert tok.calls == calls and sh2.path == sh.path
    assert np.array_equal(sh2.train, sh.train)
    # a changed source or setting is a new cache entry
    sh3 = prepare_tokens(sources, tok, tmp_path / "cache", val_fraction=0.2, progress=False)
    assert sh3.path != sh.path and tok.calls > calls
    _write(sources[0] / "a.txt", "changed")
    sh4 = prepare_tokens(sources, tok, tmp_path / "cache", val_fraction=0.1, progress=False)
    assert sh4.path not in (sh.path, sh3.path)


def test_max_bytes_and_xz_source(tmp_path: Path) -> None:
    text = "".join(f"line {i} é\n" for i in range(5000))
    plain = _write(tmp_path / "p" / "c.txt", text)
    xz = tmp_path / "x" / "c.txt.xz"
    xz.parent.mkdir()
    xz.write_bytes(lzma.compress(text.encode()))
    a = prepare_tokens([plain], ByteTok(), tmp_path / "c1", val_fraction=0.0, progress=False)
    b = prepare_tokens([xz], ByteTok(), tmp_path / "c2", val_fraction=0.0, progress=False)
    assert np.array_equal(a.train, b.train) and len(a.val) == 0
    c = prepare_tokens([xz], ByteTok(), tmp_path / "c3", val_fraction=0.0, max_bytes=1000, progress=False)
    # the cap falls inside a two-byte character, which is dropped rather than replaced
    assert text.encode()[999] == 0xC3
    assert c.train.tolist() == [*list(text.encode()[:999]), 256]
    assert c.meta["sources"][0]["bytes_read"] == 1000


def test_batches_deterministic_and_resumable(sources: list[Path], tmp_path: Path) -> None:
    sh = prepare_tokens(sources, ByteTok(), tmp_path / "cache", progress=False)
    run = list(itertools.islice(sh.batches("train", 4, 16, seed=7), 6))
    again = list(itertools.islice(sh.batches("train", 4, 16, seed=7), 6))
    resumed = list(itertools.islice(sh.batches("train", 4, 16, seed=7, start_step=3), 3))
    other = next(sh.batches("train", 4, 16, seed=8))
    for (x, y), (x2, y2) in zip(run, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(run[3:], resumed, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    x, y = run[0]
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(x, other[0]) and not torch.equal(run[0][0], run[1][0])
    # every window is a real slice of the train split
    train = torch.from_numpy(sh.train.astype(np.int64))
    for row, nxt in zip(x, y, strict=True):
        starts = [i for i in range(len(train) - 16) if torch.equal(train[i : i + 16], row)]
        assert any(torch.equal(train[i + 1 : i + 17], nxt) for i in starts)


def test_val_batches(sources: list[Path], tmp_path: Path) -> None:
    sh = prepare_tokens(sources, ByteTok(), tmp_path / "cache", val_fraction=0.1, progress=False)
    a, b = sh.val_batches(2, 32, 3), sh.val_batches(2, 32, 3)
    assert len(a) == 3
    for (x, y), (x2, y2) in zip(a, b, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (2, 32)
    val = sh.val.astype(np.int64)
    assert a[0][0][0].tolist() == val[:32].tolist()
    with pytest.raises(ValueError, match="seq_len"):
        sh.val_batches(1, len(sh.val), 1)


def test_bad_arguments(sources: list[Path], tmp_path: Path) -> None:
    class Big(ByteTok):
        vocab_size = 70000

    with pytest.raises(ValueError, match="uint16"):
        prepare_tokens(sources, Big(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_tokens(sources, ByteTok(), tmp_path, val_fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="max_bytes"):
        prepare_tokens(sources, ByteTok(), tmp_path, max_bytes=0, progress=False)
    with pytest.raises(FileNotFoundError):
        prepare_tokens([tmp_path / "missing"], ByteTok(), tmp_path, progress=False)
    sh = prepare_tokens(sources, ByteTok(), tmp_path / "c", progress=False)
    assert isinstance(sh, TokenShards)
    with pytest.raises(ValueError, match="split"):
        next(sh.batches("test", 2, 8, 0))
    with pytest.raises(ValueError, match="batch_size"):
        next(sh.batches("train", 0, 8, 0))


def test_default_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUONLAB_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("MUONLAB_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        default_data_dir()
    monkeypatch.delenv("MUONLAB_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    try:
        found = default_data_dir()
    except FileNotFoundError as e:
        assert "--data-dir" in str(e)
    else:
        assert (found / "SHA256SUMS").is_file()


def test_real_corpus_prefix_with_bpe4096(tmp_path: Path) -> None:
    try:
        dd = default_data_dir()
    except FileNotFoundError:
        pytest.skip("shared data dir not available")
    from muonlab.harness.tokenizer import load_tokenizer

    tok = load_tokenizer("bpe4096", dd)
    sh = prepare_tokens([dd / "corpus-debian-v1.txt.xz"], tok, tmp_path, max_bytes=200_000, progress=False)
    assert int(sh.train.max()) < 4096 and len(sh.train) > 10_000
    x, _ = next(sh.batches("train", 1, 64, seed=0))
    with lzma.open(dd / "corpus-debian-v1.txt.xz") as fh:
        head = fh.read(200_000).decode()
    assert tok.decode(x[0].tolist()) in head
