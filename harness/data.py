"""Token data for the harness: tokenize text sources once into cached uint16 shards, then sample batches.

`prepare_tokens` reads each source (the corpus ``.txt.xz``, stream-decompressed; a text file; or a
directory, whose text files are read recursively in byte-sorted path order), tokenizes it in chunks,
appends ``eot_id`` after every file, and holds out the LAST ``val_fraction`` of each source's tokens as
validation. ``train.bin`` / ``val.bin`` (raw little-endian uint16) and ``meta.json`` go into
``cache_dir/<key>/`` where ``key`` hashes (format version, chunking, sources' sha256, tokenizer sha256,
val_fraction, max_bytes); a second call with the same inputs only re-hashes the sources.

Chunking: text is decoded incrementally and cut after the last newline of every ~64 KiB piece, pieces are
encoded with ``encode_batch``. Cutting at a newline can change the tokens next to the cut (a run of
whitespace is split in two); the result is deterministic and part of the cache key (`FORMAT_VERSION`).

Batches (`TokenShards.batches`): the batch of step ``s`` draws ``batch_size`` random offsets from
``numpy.random.Generator(PCG64(SeedSequence([seed, s])))``: it depends on (seed, step) only, so a run
resumed at ``start_step`` sees bit-identical batches.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import lzma
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from .tokenizer import Tokenizer, file_sha256

__all__ = [
    "FORMAT_VERSION",
    "TEXT_SUFFIXES",
    "TokenShards",
    "default_data_dir",
    "iter_source_files",
    "load_shards",
    "prepare_tokens",
    "source_sha256",
]

FORMAT_VERSION = 2
READ_BYTES = 4 << 20
"""Bytes of raw text read per block."""
PIECE_CHARS = 64 << 10
"""Target characters per encoded piece (cut after the last newline inside it)."""
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".pod")
"""Files a directory source contributes (also with a trailing ``.xz``)."""

_REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """``$MUONLAB_DATA_DIR``, else the first existing of ``<repo>/../shared/data``, ``./shared/data``,
    ``../shared/data``, ``./data`` (must contain SHA256SUMS); FileNotFoundError otherwise."""
    env = os.environ.get("MUONLAB_DATA_DIR")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"MUONLAB_DATA_DIR={env!r} is not a directory")
        return p
    cwd = Path.cwd()
    candidates = [
        _REPO_ROOT.parent / "shared" / "data",
        cwd / "shared" / "data",
        cwd.parent / "shared" / "data",
        cwd / "data",
    ]
    for c in candidates:
        if (c / "SHA256SUMS").is_file():
            return c.resolve()
    raise FileNotFoundError(
        "data dir not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); pass --data-dir DIR or set MUONLAB_DATA_DIR to the folder holding SHA256SUMS, gpt2.tiktoken, "
        "bpe4096.json and corpus-debian-v1.txt.xz"
    )


def _is_text_file(p: Path) -> bool:
    name = p.name[:-3] if p.name.endswith(".xz") else p.name
    return name.endswith(TEXT_SUFFIXES)


def iter_source_files(source: Path) -> list[Path]:
    """The files of one source: itself, or a directory's text files (recursive, byte-sorted paths)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = [p for p in source.rglob("*") if p.is_file() and _is_text_file(p)]
        files.sort(key=lambda p: p.relative_to(source).as_posix().encode())
        if not files:
            raise ValueError(f"sources: directory {source} holds no text files ({', '.join(TEXT_SUFFIXES)})")
        return files
    raise FileNotFoundError(f"sources: {source} does not exist")


def source_sha256(source: Path) -> str:
    """sha256 of a file; for a directory, of its (relative path, file sha256) list."""
    source = Path(source)
    if source.is_file():
        return file_sha256(source)
    h = hashlib.sha256()
    for f in iter_source_files(source):
        h.update(f"{f.relative_to(source).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _text_pieces(path: Path, budget: int | None, on_bytes: Any) -> Iterator[tuple[list[str], int]]:
    """Yield (pieces, raw bytes consumed) from one file, reading at most ``budget`` bytes (an incomplete
    UTF-8 character at the cap is dropped; invalid UTF-8 elsewhere becomes U+FFFD)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    carry = ""
    read_total = 0
    with _open_binary(path) as f:
        while True:
            want = READ_BYTES if budget is None else min(READ_BYTES, budget - read_total)
            raw = f.read(want) if want > 0 else b""
            read_total += len(raw)
            capped = budget is not None and read_total >= budget
            final = not raw or capped
            # at the byte cap an incomplete UTF-8 character is dropped (not replaced by U+FFFD)
            text = carry + decoder.decode(raw, final=not capped and final)
            pieces: list[str] = []
            start = 0
            while len(text) - start > PIECE_CHARS:
                cut = text.rfind("\n", start, start + PIECE_CHARS)
                cut = start + PIECE_CHARS if cut < 0 else cut + 1
                pieces.append(text[start:cut])
                start = cut
            carry = text[start:]
            if final and carry:
                pieces.append(carry)
                carry = ""
            on_bytes(len(raw))
            if pieces:
                yield pieces, len(raw)
            if final:
                return


def _tokenize_source(source: Path, tok: Tokenizer, max_bytes: int | None, bar: Any) -> tuple[np.ndarray, int]:
    """All tokens of one source (uint16) and the raw bytes read; ``eot_id`` after every file."""
    parts: list[np.ndarray] = []
    remaining = max_bytes
    read = 0
    for f in iter_source_files(source):
        if remaining is not None and remaining <= 0:
            break
        got = 0

        def count(n: int) -> None:
            nonlocal got
            got += n
            bar.update(n)

        for pieces, _ in _text_pieces(f, remaining, count):
            for ids in tok.encode_batch(pieces):
                parts.append(np.asarray(ids, dtype=np.uint16))
        parts.append(np.asarray([tok.eot_id], dtype=np.uint16))
        read += got
        if remaining is not None:
            remaining -= got
    arr = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return arr, read


@dataclass
class TokenShards:
    """Cached train/val token arrays (uint16 memmaps) with deterministic batch samplers."""

    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]
    path: Path

    def split(self, split: str) -> np.ndarray:
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"split: expected 'train' or 'val', got {split!r}")

    @staticmethod
    def _check(data: np.ndarray, batch_size: int, seq_len: int, what: str) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        if seq_len <= 0:
            raise ValueError(f"seq_len: must be positive, got {seq_len}")
        if len(data) < seq_len + 1:
            raise ValueError(f"seq_len: {what} split has {len(data)} tokens, fewer than seq_len + 1 = {seq_len + 1}")

    @staticmethod
    def _gather(data: np.ndarray, offsets: np.ndarray, seq_len: int) -> tuple[Tensor, Tensor]:
        idx = offsets[:, None] + np.arange(seq_len + 1)[None, :]
        chunk = torch.from_numpy(np.asarray(data[idx], dtype=np.int64))
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def batch_at(self, split: str, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[Tensor, Tensor]:
        """The batch of ``step``: offsets from ``Generator(PCG64(SeedSequence([seed, step])))``."""
        data = self.split(split)
        self._check(data, batch_size, seq_len, split)
        if step < 0 or seed < 0:
            raise ValueError(f"seed/step: must be non-negative, got seed={seed}, step={step}")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step])))
        offsets = rng.integers(0, len(data) - seq_len, size=batch_size)
        return self._gather(data, offsets, seq_len)

    def batches(
        self, split: str, batch_size: int, seq_len: int, seed: int, start_step: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite iterator of ``(x, y)`` int64 ``[batch_size, seq_len]``, ``y`` = ``x`` shifted by one;
        the k-th item is ``batch_at(..., step=start_step + k)``."""
        data = self.split(split)
        self._check(data, batch_size, seq_len, split)
        step = start_step
        while True:
            yield self.batch_at(split, batch_size, seq_len, seed, step)
            step += 1

    def val_batches(self, batch_size: int, seq_len: int, n: int) -> list[tuple[Tensor, Tensor]]:
        """``n`` fixed validation batches: ``n * batch_size`` windows at evenly spaced offsets over val
        (non-overlapping when val holds enough tokens)."""
        if n <= 0:
            raise ValueError(f"n: must be positive, got {n}")
        self._check(self.val, batch_size, seq_len, "val")
        starts = np.linspace(0, len(self.val) - seq_len - 1, n * batch_size).astype(np.int64)
        return [self._gather(self.val, starts[i * batch_size : (i + 1) * batch_size], seq_len) for i in range(n)]


def _memmap(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r")


def load_shards(path: Path) -> TokenShards:
    """Open a finished cache entry (a folder with meta.json, train.bin, val.bin)."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    train, val = _memmap(path / "train.bin"), _memmap(path / "val.bin")
    if len(train) != meta["train_tokens"] or len(val) != meta["val_tokens"]:
        raise ValueError(f"cache: {path} is inconsistent with its meta.json (delete it to rebuild)")
    return TokenShards(train=train, val=val, meta=meta, path=path)


def prepare_tokens(
    sources: list[Path],
    tokenizer: Tokenizer,
    cache_dir: Path,
    *,
    val_fraction: float = 0.01,
    max_bytes: int | None = None,
    progress: bool = True,
) -> TokenShards:
    """Tokenize ``sources`` into ``cache_dir/<key>/{train.bin,val.bin,meta.json}`` (cached; see module doc).

    ``max_bytes`` caps the raw (decompressed) text read from EACH source; ``val_fraction`` in [0, 1) of each
    source's tokens (the last ones, ``floor(n * val_fraction)``) go to val.
    """
    if not sources:
        raise ValueError("sources: need at least one source")
    if not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes <= 0):
        raise ValueError(f"max_bytes: must be a positive int or None, got {max_bytes!r}")
    if tokenizer.vocab_size > 1 << 16:
        raise ValueError(f"tokenizer: vocab_size {tokenizer.vocab_size} does not fit uint16")
    srcs = [Path(s).resolve() for s in sources]
    hashes = [source_sha256(s) for s in srcs]
    key_obj = {
        "format": FORMAT_VERSION,
        "read_bytes": READ_BYTES,
        "piece_chars": PIECE_CHARS,
        "sources": hashes,
        "tokenizer": tokenizer.sha256,
        "val_fraction": val_fraction,
        "max_bytes": max_bytes,
    }
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:20]
    cache_dir = Path(cache_dir)
    out = cache_dir / f"{tokenizer.name}-{key}"
    if (out / "meta.json").is_file():
        return load_shards(out)

    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir))
    try:
        src_meta = []
        n_train = n_val = 0
        with open(tmp / "train.bin", "wb") as ftr, open(tmp / "val.bin", "wb") as fva:
            for s, h in zip(srcs, hashes, strict=True):
                with tqdm(
                    desc=f"tokenize {s.name}", unit="B", unit_scale=True, disable=not progress, total=max_bytes
                ) as bar:
                    toks, nbytes = _tokenize_source(s, tokenizer, max_bytes, bar)
                n_v = int(len(toks) * val_fraction)
                cut = len(toks) - n_v
                toks[:cut].tofile(ftr)
                toks[cut:].tofile(fva)
                n_train += cut
                n_val += n_v
                src_meta.append(
                    {
                        "path": str(s),
                        "sha256": h,
                        "bytes_read": nbytes,
                        "tokens": len(toks),
                        "train_tokens": int(cut),
                        "val_tokens": n_v,
                    }
                )
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "dtype": "uint16",
            "tokenizer": {
                "name": tokenizer.name,
                "sha256": tokenizer.sha256,
                "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id,
            },
            "sources": src_meta,
            "val_fraction": val_fraction,
            "max_bytes": max_bytes,
            "train_tokens": n_train,
            "val_tokens": n_val,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same key first
            if not (out / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_shards(out)
