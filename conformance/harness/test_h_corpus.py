"""muonlab.harness.corpus: the concatenation recipe on a synthetic package tree (no network)."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from muonlab.harness.corpus import (
    PACKAGES,
    CorpusMismatchError,
    build_corpus,
    corpus_text_sha256,
    verify_corpus,
    write_sections,
)


def _w(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def make_trees(root: Path) -> tuple[dict[str, Path], bytes]:
    """Synthetic extracted packages and the corpus text the recipe must produce from them."""
    t = {p: root / p for p in PACKAGES}
    expected = b""

    gcide = b"\n\n00-database-url\n   gcide entry\nzythum\n   malt liquor\n"
    _w(t["dict-gcide"] / "usr/share/dictd/gcide.dict.dz", gzip.compress(gcide))
    _w(t["dict-gcide"] / "usr/share/dictd/gcide.index", b"index, not text\n")
    expected += gcide

    # byte order: "PCI-x" < "PCI/a" ('-' < '/') < "a" (upper case first); html outside _sources ignored
    src = t["linux-doc-6.1"] / "usr/share/doc/linux-doc-6.1/html/_sources"
    files = {
        "a/z.rst.txt": b"A-Z\n",
        "PCI/a.rst.txt": b"PCI A\n",
        "PCI-x.rst.txt": b"PCI dash",
        "B.rst.txt": b"B upper\n",
    }
    for name, data in files.items():
        _w(src / name, data)
    _w(t["linux-doc-6.1"] / "usr/share/doc/linux-doc-6.1/html/index.html", b"<html>")
    os.symlink("B.rst.txt", src / "C-link.rst.txt")  # symlinks are not regular files: skipped
    expected += b"B upper\n" + b"PCI dash" + b"PCI A\n" + b"A-Z\n"

    py = t["python3.11-doc"] / "usr/share/doc/python3.11/html/_sources"
    _w(py / "library/os.rst.txt", b"os module\n")
    _w(py / "about.rst.txt", b"About\n")
    expected += b"About\n" + b"os module\n"

    _w(t["perl-doc"] / "usr/share/perl/5.36.0/pod/perlfunc.pod", b"=head1 perlfunc\n")
    _w(t["perl-doc"] / "usr/share/doc/perl/pumpkin.pod.gz", gzip.compress(b"=head1 Pumpkin\n"))
    _w(t["perl-doc"] / "usr/share/perl/5.36.0/pod/notes.txt", b"not pod\n")
    expected += b"=head1 Pumpkin\n" + b"=head1 perlfunc\n"

    wn = t["wordnet-base"] / "usr/share/wordnet"
    header = b"  1 This software and database is being provided\n"
    for pos in ("noun", "verb", "adj", "adv"):
        _w(
            wn / f"data.{pos}",
            header + f'00001 03 n 01 {pos}word 0 000 | a {pos} gloss; "x | y"  \n'.encode() + b"00002 no gloss here\n",
        )
    _w(wn / "index.noun", b"x | not data\n")
    for pos in ("adj", "adv", "noun", "verb"):
        expected += f'a {pos} gloss; "x | y"  \n'.encode()

    ft = t["fortunes"] / "usr/share/games/fortunes"
    _w(ft / "zippy", b"Yow!\n%\nAre we having fun?\n%\n")
    _w(ft / "art", b"Art is long\n%\n 100%\n")
    _w(ft / "art.dat", b"\x00\x01binary")
    os.symlink("art", ft / "art.u8")
    expected += b"Art is long\n 100%\n" + b"Yow!\nAre we having fun?\n"
    return t, expected


@pytest.mark.parametrize("compressor", ["lzma", "xz"])
def test_sections_concatenate_in_recipe_order(tmp_path: Path, compressor: str) -> None:
    if compressor == "xz" and shutil.which("xz") is None:
        pytest.skip("xz not on PATH")
    trees, expected = make_trees(tmp_path / "root")
    out = tmp_path / "out" / "c.txt.xz"
    rep = write_sections(trees, out, compressor=compressor)
    with lzma.open(out) as fh:
        text = fh.read()
    assert text == expected
    assert rep.text_sha256 == hashlib.sha256(expected).hexdigest() == corpus_text_sha256(out)
    assert list(rep.sections) == ["gcide", "linuxdoc", "pydoc", "perl", "wordnet", "fortunes"]
    assert sum(rep.section_bytes.values()) == len(expected)
    assert rep.sections_differing == list(rep.sections)  # synthetic text is not the real corpus
    # one xz stream per section: each decompresses on its own
    raw, streams = out.read_bytes(), 0
    while raw:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        d.decompress(raw)
        raw, streams = d.unused_data.lstrip(b"\0"), streams + 1
    assert streams == 6


def test_missing_package_tree(tmp_path: Path) -> None:
    trees, _ = make_trees(tmp_path / "root")
    del trees["fortunes"]
    with pytest.raises(ValueError, match="fortunes"):
        write_sections(trees, tmp_path / "c.xz")
    with pytest.raises(FileNotFoundError, match="packages_dir"):
        build_corpus(tmp_path / "c.xz", work_dir=tmp_path / "w", packages_dir=tmp_path)


def test_verify_corpus(tmp_path: Path) -> None:
    f = tmp_path / "corpus-debian-v1.txt.xz"
    f.write_bytes(lzma.compress(b"text"))
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  corpus-debian-v1.txt.xz\n{'1' * 64}  other\n")
    assert verify_corpus(f, tmp_path / "SHA256SUMS")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  corpus-debian-v1.txt.xz\n")
    assert not verify_corpus(f, tmp_path / "SHA256SUMS")
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  unrelated\n")
    with pytest.raises(ValueError, match="no entry"):
        verify_corpus(f, tmp_path / "SHA256SUMS")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None, reason="needs dpkg")
def test_build_from_local_debs_reports_mismatch_and_keeps_file(tmp_path: Path) -> None:
    trees, expected = make_trees(tmp_path / "root")
    debs = tmp_path / "debs"
    debs.mkdir()
    for pkg, tree in trees.items():
        _w(
            tree / "DEBIAN/control",
            f"Package: {pkg}\nVersion: 9.9-1\nArchitecture: all\n"
            "Maintainer: x <x@example.org>\nDescription: synthetic\n".encode(),
        )
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(debs / f"{pkg}_9.9-1_all.deb")],
            check=True,
            capture_output=True,
        )
    out = tmp_path / "corpus.txt.xz"
    with pytest.raises(CorpusMismatchError, match="kept") as err:
        build_corpus(out, work_dir=tmp_path / "work", packages_dir=debs)
    assert out.is_file()
    with lzma.open(out) as fh:
        assert fh.read() == expected
    assert "fortunes" in str(err.value) and err.value.report.package_versions["perl-doc"] == "9.9-1"
    report = json.loads(Path(str(out) + ".build.json").read_text())
    assert report["text_sha256"] == hashlib.sha256(expected).hexdigest()
    # with the matching expected hash the build succeeds and returns the path
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert build_corpus(out, work_dir=tmp_path / "work", packages_dir=debs, expected_sha256=digest) == out
