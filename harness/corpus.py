"""Reproducible builder for ``corpus-debian-v1.txt.xz`` (the recipe in shared/data/README.md).

Steps: ``apt-get download`` the six packages into ``work_dir/debs`` (skipped when ``packages_dir`` holds
the ``.deb`` files), ``dpkg -x`` each into ``work_dir/root/<package>``, then six text SECTIONS, each
compressed as its own xz stream (``xz -6 -T2``: LZMA2 preset 6, 8 MiB dictionary, multi-threaded block
format with 24 MiB blocks) and appended to the output in this order:

1. ``gcide``: ``zcat usr/share/dictd/gcide.dict.dz`` (dict-gcide).
2. ``linuxdoc``: every regular file under the ``_sources`` folders of linux-doc-6.1, byte-sorted by path
   (``LC_ALL=C find ... -type f | LC_ALL=C sort``), plain ``cat`` (no separators).
3. ``pydoc``: the same for python3.11-doc.
4. ``perl``: every regular file named ``*.pod`` or ``*.pod.gz`` in perl-doc, byte-sorted by path (so
   ``usr/share/doc/perl/*.pod.gz`` comes before ``usr/share/perl/...``), ``.gz`` decompressed.
5. ``wordnet``: for ``data.adj``, ``data.adv``, ``data.noun``, ``data.verb`` (byte-sorted, NOT the
   README's ``{noun,verb,adj,adv}`` order), every line that contains ``"| "``: the text after the first
   ``"| "``, with its newline.
6. ``fortunes``: the regular files of ``usr/share/games/fortunes`` not ending ``.dat``/``.u8`` (the
   ``.u8`` are symlinks), byte-sorted by name, without the lines that are exactly ``%``.

These choices were fixed by splitting the shipped corpus at its xz stream boundaries (it has six
streams, one per section) and matching each section's sha256 (`SECTION_SHA256`); with Debian bookworm's
packages (`VERIFIED_VERSIONS`) and XZ Utils 5.4.1 the rebuilt ``.xz`` is byte-identical to the shipped one.
A different xz version may compress differently: then compare `CORPUS_TEXT_SHA256` (the decompressed
text), which `build_corpus` always reports.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from .tokenizer import file_sha256, read_sha256sums

__all__ = [
    "CORPUS_NAME",
    "CORPUS_SHA256",
    "CORPUS_TEXT_SHA256",
    "PACKAGES",
    "SECTION_SHA256",
    "VERIFIED_VERSIONS",
    "BuildReport",
    "CorpusMismatchError",
    "build_corpus",
    "corpus_sections",
    "corpus_text_sha256",
    "extract_packages",
    "verify_corpus",
    "write_sections",
]

CORPUS_NAME = "corpus-debian-v1.txt.xz"
CORPUS_SHA256 = "fb2775cd996eea9002b19643b7bc788643a3dfc90237f2a8b61cf113a2c66650"
CORPUS_TEXT_SHA256 = "586ef8553f51052bf713051fb0a78cb64969e8ee94155478026af25972858ddb"
"""sha256 of the decompressed corpus (95,633,396 bytes)."""
PACKAGES = ("dict-gcide", "linux-doc-6.1", "python3.11-doc", "perl-doc", "wordnet-base", "fortunes")
VERIFIED_VERSIONS = {
    "dict-gcide": "0.48.5+nmu2",
    "linux-doc-6.1": "6.1.192-2",
    "python3.11-doc": "3.11.2-6+deb12u9",
    "perl-doc": "5.36.0-7+deb12u4",
    "wordnet-base": "1:3.0-37",
    "fortunes": "1:1.99.1-7.3",
}
"""Debian bookworm versions with which the rebuild matched `CORPUS_SHA256` byte for byte."""
SECTION_SHA256 = {
    "gcide": "802beb667e1fb666203e750f1faea60d5c202ac5430c2083c4180494609f10a7",
    "linuxdoc": "7b1d46883f6153d144d5abb2248f4eae9167f88cc9278903a0a8a02a7d87726f",
    "pydoc": "4f69e6115088c2444e0059d0973967db9dbc27ae3405343e26fac074aa501701",
    "perl": "477b0b4e751032332a78cf741bf290c4bc5481bafcb4864c361f33cbe01512ca",
    "wordnet": "229262267468394f0e1ef84787b782b1f22d582d3f7a5a314f99c4c830806934",
    "fortunes": "5462ae07262b006384b57cad3c54abb47d53c9531989be8342ac54230bebd904",
}
XZ_ARGS = ("-6", "-T2", "-c")
_CHUNK = 1 << 20


class CorpusMismatchError(ValueError):
    """The built corpus does not have the expected sha256 (the file is kept at ``report.path``)."""

    def __init__(self, message: str, report: BuildReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class BuildReport:
    path: str
    sha256: str
    text_sha256: str
    sections: dict[str, str] = field(default_factory=dict)
    section_bytes: dict[str, int] = field(default_factory=dict)
    sections_differing: list[str] = field(default_factory=list)
    package_versions: dict[str, str] = field(default_factory=dict)
    compressor: str = ""
    expected_sha256: str | None = None

    @property
    def text_matches(self) -> bool:
        return self.text_sha256 == CORPUS_TEXT_SHA256


# -- sections ------------------------------------------------------------------------------------------


def _bkey(p: Path) -> bytes:
    return p.as_posix().encode()


def _regular_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _read_file(p: Path) -> Iterator[bytes]:
    with open(p, "rb") as f:
        while block := f.read(_CHUNK):
            yield block


def _gcide(root: Path) -> Iterator[bytes]:
    path = root / "usr/share/dictd/gcide.dict.dz"
    if not path.is_file():
        raise FileNotFoundError(f"dict-gcide: {path} missing")
    with gzip.open(path, "rb") as f:
        while block := f.read(_CHUNK):
            yield block


def _doc_sources(root: Path) -> Iterator[bytes]:
    dirs = sorted((d for d in root.rglob("_sources") if d.is_dir()), key=_bkey)
    if not dirs:
        raise FileNotFoundError(f"{root}: no _sources folder")
    files = sorted((f for d in dirs for f in _regular_files(d)), key=_bkey)
    for f in files:
        yield from _read_file(f)


def _perl(root: Path) -> Iterator[bytes]:
    files = sorted((f for f in _regular_files(root) if f.name.endswith((".pod", ".pod.gz"))), key=_bkey)
    if not files:
        raise FileNotFoundError(f"perl-doc: no *.pod / *.pod.gz under {root}")
    for f in files:
        if f.name.endswith(".gz"):
            yield gzip.decompress(f.read_bytes())
        else:
            yield from _read_file(f)


def _lines(data: bytes) -> list[bytes]:
    """Split after every ``\\n`` (like sed/grep; a last line without newline is kept as is)."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _wordnet(root: Path) -> Iterator[bytes]:
    names = ("data.adj", "data.adv", "data.noun", "data.verb")
    found = {f.name: f for f in _regular_files(root) if f.name in names}
    missing = [n for n in names if n not in found]
    if missing:
        raise FileNotFoundError(f"wordnet-base: {missing} not found under {root}")
    for n in sorted(names):
        yield b"".join(line.split(b"| ", 1)[1] for line in _lines(found[n].read_bytes()) if b"| " in line)


def _fortunes(root: Path) -> Iterator[bytes]:
    d = root / "usr/share/games/fortunes"
    if not d.is_dir():
        raise FileNotFoundError(f"fortunes: {d} missing")
    files = sorted(
        (f for f in d.iterdir() if f.is_file() and not f.is_symlink() and not f.name.endswith((".dat", ".u8"))),
        key=lambda f: f.name.encode(),
    )
    for f in files:
        yield b"".join(line for line in _lines(f.read_bytes()) if line.rstrip(b"\n") != b"%")


def corpus_sections(trees: dict[str, Path]) -> list[tuple[str, Callable[[], Iterator[bytes]]]]:
    """The six sections in order, as (name, generator factory), from extracted package trees
    ``{package: root}`` (roots as made by ``dpkg -x``)."""
    missing = [p for p in PACKAGES if p not in trees]
    if missing:
        raise ValueError(f"trees: missing packages {missing}")
    return [
        ("gcide", lambda: _gcide(trees["dict-gcide"])),
        ("linuxdoc", lambda: _doc_sources(trees["linux-doc-6.1"])),
        ("pydoc", lambda: _doc_sources(trees["python3.11-doc"])),
        ("perl", lambda: _perl(trees["perl-doc"])),
        ("wordnet", lambda: _wordnet(trees["wordnet-base"])),
        ("fortunes", lambda: _fortunes(trees["fortunes"])),
    ]


def _compress_stream(chunks: Iterator[bytes], out: IO[bytes], compressor: str) -> tuple[str, int]:
    """Compress one section into ``out`` as one xz stream; return (sha256, size) of the raw text."""
    h = hashlib.sha256()
    n = 0
    if compressor == "xz":
        proc = subprocess.Popen(["xz", *XZ_ARGS], stdin=subprocess.PIPE, stdout=out)
        assert proc.stdin is not None
        try:
            for c in chunks:
                h.update(c)
                n += len(c)
                proc.stdin.write(c)
        finally:
            proc.stdin.close()
            rc = proc.wait()
        if rc != 0:
            raise RuntimeError(f"xz exited with status {rc}")
    elif compressor == "lzma":
        comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
        for c in chunks:
            h.update(c)
            n += len(c)
            out.write(comp.compress(c))
        out.write(comp.flush())
    else:
        raise ValueError(f"compressor: expected 'xz' or 'lzma', got {compressor!r}")
    return h.hexdigest(), n


def write_sections(trees: dict[str, Path], out: Path, *, compressor: str = "auto") -> BuildReport:
    """Concatenate the sections of ``trees`` into ``out`` (one xz stream each); no sha256 check.

    ``compressor``: ``"xz"`` (the CLI, reproduces the shipped bytes), ``"lzma"`` (Python's module: same
    text, different bytes) or ``"auto"`` (xz when on PATH).
    """
    if compressor == "auto":
        compressor = "xz" if shutil.which("xz") else "lzma"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    report = BuildReport(path=str(out), sha256="", text_sha256="", compressor=compressor)
    text_hash = hashlib.sha256()
    with open(tmp, "wb") as f:
        for name, make in corpus_sections(trees):
            digest, size = _compress_stream(_tee(make(), text_hash), f, compressor)
            f.flush()
            report.sections[name] = digest
            report.section_bytes[name] = size
            if digest != SECTION_SHA256[name]:
                report.sections_differing.append(name)
    tmp.replace(out)
    report.sha256 = file_sha256(out)
    report.text_sha256 = text_hash.hexdigest()
    return report


def _tee(chunks: Iterator[bytes], h: hashlib._Hash) -> Iterator[bytes]:
    for c in chunks:
        h.update(c)
        yield c


# -- packages ------------------------------------------------------------------------------------------


def _find_debs(d: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        hits = sorted(d.glob(f"{pkg}_*.deb"))
        if len(hits) > 1:
            raise ValueError(f"packages_dir: several .deb files for {pkg} in {d}: {[h.name for h in hits]}")
        if hits:
            found[pkg] = hits[0]
    return found


def _deb_version(deb: Path) -> str:
    try:
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return deb.name.split("_")[1].replace("%3a", ":")


def download_packages(dest: Path) -> dict[str, Path]:
    """``apt-get download`` the six packages into ``dest`` (needs apt and a prior ``apt-get update``)."""
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"apt-get not found: pass packages_dir with the six .deb files ({', '.join(PACKAGES)})")
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=dest, check=True)
    return _find_debs(dest)


def extract_packages(debs: dict[str, Path], root: Path) -> dict[str, Path]:
    """``dpkg -x`` every ``.deb`` into ``root/<package>`` (replacing an earlier extraction)."""
    if shutil.which("dpkg") is None:
        raise RuntimeError("dpkg not found: the corpus build needs a Debian-like system")
    trees: dict[str, Path] = {}
    for pkg, deb in debs.items():
        target = root / pkg
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
        trees[pkg] = target
    return trees


def build_corpus(
    out: Path,
    *,
    work_dir: Path,
    packages_dir: Path | None = None,
    expected_sha256: str | None = CORPUS_SHA256,
    compressor: str = "auto",
) -> Path:
    """Download (or take from ``packages_dir``), extract and concatenate the corpus into ``out``.

    Returns ``out``; writes it and ``<out>.build.json`` (the `BuildReport`: section hashes, text hash,
    package versions). When ``expected_sha256`` is set and the
    ``.xz`` differs, raises `CorpusMismatchError` saying whether the decompressed text still matches
    `CORPUS_TEXT_SHA256` and which sections differ; ``out`` is kept either way.
    """
    work_dir = Path(work_dir)
    debs = _find_debs(Path(packages_dir)) if packages_dir is not None else {}
    missing = [p for p in PACKAGES if p not in debs]
    if missing:
        if packages_dir is not None:
            raise FileNotFoundError(f"packages_dir: no .deb for {missing} in {packages_dir}")
        debs = download_packages(work_dir / "debs")
        missing = [p for p in PACKAGES if p not in debs]
        if missing:
            raise RuntimeError(f"apt-get download did not produce .deb files for {missing}")
    trees = extract_packages(debs, work_dir / "root")
    report = write_sections(trees, Path(out), compressor=compressor)
    report.package_versions = {p: _deb_version(d) for p, d in debs.items()}
    report.expected_sha256 = expected_sha256
    Path(str(out) + ".build.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    if expected_sha256 is not None and report.sha256 != expected_sha256.lower():
        text = (
            (
                "the decompressed text MATCHES the reference (" + CORPUS_TEXT_SHA256[:16] + "...), so only the "
                "compression differs (xz version or settings)"
            )
            if report.text_matches
            else (
                "the decompressed text differs too; sections differing from the reference: "
                + ", ".join(report.sections_differing)
                + f"; package versions {report.package_versions} (verified: {VERIFIED_VERSIONS})"
            )
        )
        raise CorpusMismatchError(
            f"corpus: sha256 of {out} is {report.sha256}, expected {expected_sha256}; {text}. The file was kept.",
            report,
        )
    return Path(out)


# -- verification ----------------------------------------------------------------------------------------


def verify_corpus(path: Path, sums_file: Path) -> bool:
    """True when the sha256 of ``path`` equals its entry (by file name, else `CORPUS_NAME`) in ``sums_file``."""
    path, sums_file = Path(path), Path(sums_file)
    if not path.is_file():
        raise FileNotFoundError(f"path: {path} not found")
    sums = read_sha256sums(sums_file)
    expected = sums.get(path.name, sums.get(CORPUS_NAME))
    if expected is None:
        raise ValueError(f"sums_file: {sums_file} has no entry for {path.name} or {CORPUS_NAME}")
    return file_sha256(path) == expected


def corpus_text_sha256(path: Path) -> str:
    """sha256 of the decompressed contents of an ``.xz`` file (all streams)."""
    h = hashlib.sha256()
    with lzma.open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()
