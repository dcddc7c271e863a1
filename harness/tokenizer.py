"""Tokenizers for the harness, loaded from local files only (no download).

* ``"gpt2"``: tiktoken ``Encoding`` built from ``data_dir/gpt2.tiktoken`` (the r50k_base ranks) with the
  r50k_base split regex and ``<|endoftext|>`` = 50256, i.e. exactly ``tiktoken.get_encoding("gpt2")``.
  The file's sha256 is checked against ``data_dir/SHA256SUMS`` (or the pinned hash when that file is absent).
* ``"bpe4096"``: the byte-level BPE ``data_dir/bpe4096.json`` (HF tokenizers), for small CPU models.

``encode`` treats every string as plain text: ``"<|endoftext|>"`` inside a document is not turned into
the special token by the gpt2 tokenizer (tiktoken ``encode_ordinary``). The HF tokenizer matches its
added tokens inside text (tokenizers' behaviour); the corpus has no such string.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "GPT2_TIKTOKEN_SHA256",
    "TOKENIZER_FILES",
    "HFTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "file_sha256",
    "load_tokenizer",
    "read_sha256sums",
]

GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
"""sha256 of whisper/assets/gpt2.tiktoken (openai-whisper==20250625), used when SHA256SUMS is absent."""

R50K_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""r50k_base (GPT-2) pre-tokenization regex, as in tiktoken_ext.openai_public."""

ENDOFTEXT = "<|endoftext|>"
TOKENIZER_FILES: dict[str, str] = {"gpt2": "gpt2.tiktoken", "bpe4096": "bpe4096.json"}


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int
    sha256: str

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_sha256sums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum`` file into ``{file name: hex digest}`` (``*`` binary markers stripped)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        out[name.strip().lstrip("*")] = digest.lower()
    return out


def _expected_sha256(data_dir: Path, fname: str) -> str | None:
    sums = data_dir / "SHA256SUMS"
    if sums.is_file():
        expected = read_sha256sums(sums).get(fname)
        if expected is not None:
            return expected
    return GPT2_TIKTOKEN_SHA256 if fname == TOKENIZER_FILES["gpt2"] else None


class TiktokenTokenizer:
    """GPT-2 BPE through tiktoken (``encode_ordinary``; batch encoding uses tiktoken's threads)."""

    def __init__(self, path: Path, sha256: str, name: str = "gpt2") -> None:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        try:
            from tiktoken_ext.openai_public import r50k_pat_str as pat_str  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - older/newer tiktoken layouts
            pat_str = R50K_PAT_STR
        ranks = load_tiktoken_bpe(str(path))
        self.name = name
        self.sha256 = sha256
        self.eot_id = len(ranks)  # 50256 for GPT-2
        self._enc = tiktoken.Encoding(
            name=f"{name}-local", pat_str=pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: self.eot_id}
        )
        self.vocab_size = self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(list(ids))


class HFTokenizer:
    """A HF ``tokenizers`` JSON tokenizer (byte-level BPE); no special tokens are added on encode."""

    def __init__(self, path: Path, sha256: str, name: str = "bpe4096") -> None:
        from tokenizers import Tokenizer as _HF

        self._tok = _HF.from_file(str(path))
        self.name = name
        self.sha256 = sha256
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eot = self._tok.token_to_id(ENDOFTEXT)
        if eot is None:
            raise ValueError(f"tokenizer: {path} has no {ENDOFTEXT} token")
        self.eot_id = eot

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))


def load_tokenizer(name: str, data_dir: Path) -> Tokenizer:
    """Load ``"gpt2"`` or ``"bpe4096"`` from ``data_dir`` (ValueError on unknown name or sha256 mismatch).

    The file's sha256 is checked against ``data_dir/SHA256SUMS`` when it lists the file (gpt2 always:
    the pinned `GPT2_TIKTOKEN_SHA256` stands in for a missing entry).
    """
    if name not in TOKENIZER_FILES:
        raise ValueError(f"tokenizer: unknown name {name!r}; known: {sorted(TOKENIZER_FILES)}")
    data_dir = Path(data_dir)
    path = data_dir / TOKENIZER_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer: {path} not found (pass --data-dir or set MUONLAB_DATA_DIR)")
    digest = file_sha256(path)
    expected = _expected_sha256(data_dir, path.name)
    if expected is not None and digest != expected:
        raise ValueError(f"tokenizer: sha256 of {path} is {digest}, expected {expected} (corrupt or wrong file)")
    if name == "gpt2":
        return TiktokenTokenizer(path, digest)
    return HFTokenizer(path, digest)
