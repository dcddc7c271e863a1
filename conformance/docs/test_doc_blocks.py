"""The code in README.md and docs/*.md runs as pasted, and the pointers into the docs resolve.

* Every fenced block names its language. Each ```python block is run on its own, in a fresh interpreter
  (a subprocess with the working directory set to an empty temporary folder, CPU only), and must exit 0
  within `TIMEOUT_S`; the test id is ``page:line`` of the opening fence. Blocks that are not meant to run
  (shell commands, output) use another language from `LANGUAGES`; ```toml blocks must parse, and a
  ``[sweep]`` example must validate.
* A ``page.md#anchor`` link names a heading of that page (GitHub's anchor rule).
* A section cited from the code (``docs/variants.md, "The step, stage by stage"``) is a heading of the page
  (or a labelled list item or paragraph, ``- Host syncs: ...``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = frozenset({"python", "bash", "text", "toml", "yaml", "json"})
TIMEOUT_S = 120

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the 1-based line of its opening fence, ``code`` its body."""

    page: str
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(text: str, page: str) -> list[Block]:
    """The fenced code blocks of a markdown ``text`` (CommonMark fences: 3+ backticks or tildes; a block
    closes at a fence of the same character at least as long, with nothing after it). The opening fence's
    indentation is removed from the body, so blocks nested in list items run as written."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        language = m["info"].strip().split(" ")[0] if m["info"].strip() else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j].lstrip())
            j += 1
        else:
            raise ValueError(f"{page}:{i + 1}: fence {fence!r} is never closed")
        blocks.append(Block(page, i + 1, language, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _all_blocks() -> list[Block]:
    out: list[Block] = []
    for path in PAGES:
        out.extend(fenced_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()))
    return out


BLOCKS = _all_blocks()
PYTHON_BLOCKS = [b for b in BLOCKS if b.language == "python"]


def test_parser_handles_nesting_indent_and_tildes() -> None:
    text = "\n".join(
        [
            "intro",
            "```python",
            "x = 1",
            "```",
            "- item",
            "",
            "  ```bash",
            "  echo hi",
            "  ```",
            "````text",
            "```python",
            "not a block of its own",
            "```",
            "````",
            "~~~toml",
            "a = 1",
            "~~~",
        ]
    )
    blocks = fenced_blocks(text, "t.md")
    assert [(b.line, b.language, b.code) for b in blocks] == [
        (2, "python", "x = 1\n"),
        (7, "bash", "echo hi\n"),
        (10, "text", "```python\nnot a block of its own\n```\n"),
        (15, "toml", "a = 1\n"),
    ]
    with pytest.raises(ValueError, match=r"t\.md:1: fence"):
        fenced_blocks("```python\nx = 1\n", "t.md")


def test_pages_have_python_blocks() -> None:
    """The parser found the blocks the pages are known to hold (guards against a test that runs nothing)."""
    pages = {b.page for b in PYTHON_BLOCKS}
    assert {"README.md", "docs/fast.md", "docs/variants.md", "docs/distributed.md"} <= pages


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown ``text`` outside fenced blocks: lower case, every
    character but letters, digits, ``_``, ``-`` and spaces dropped, spaces -> ``-``; repeats get ``-1``, ..."""
    fenced = {n for b in fenced_blocks(text, "") for n in range(b.line, b.line + b.code.count("\n") + 2)}
    seen: dict[str, int] = {}
    out: set[str] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m is None or n in fenced:
            continue
        slug = re.sub(r"[^\w\- ]", "", m[1].lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_sections_and_citations() -> None:
    text = "\n".join(
        [
            "## NorMuon (stage 4) [S]",
            "- Host syncs: none",
            "- `preset` is a name from PRESETS: or a spec",
            "**Owner rule.** x",
        ]
    )
    sections = _sections(text)
    assert sections == (["NorMuon (stage 4) [S]"], {"Host syncs", "Owner rule"})
    assert _cites(sections, "NorMuon") and _cites(sections, "Host syncs") and _cites(sections, "Owner rule")
    assert not _cites(sections, "NorMuon state") and not _cites(sections, "Host")


def test_heading_anchors() -> None:
    text = "# A `b(c, d)`: e\n```text\n# not a heading\n```\n## Step, stage by stage\n## Step, stage by stage\n"
    assert heading_anchors(text) == {"a-bc-d-e", "step-stage-by-stage", "step-stage-by-stage-1"}


_LINK = re.compile(r"\]\(([^)\s]*#[^)\s]*)\)")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_link_anchors_resolve(page: Path) -> None:
    """Every ``[text](page.md#anchor)`` link (or ``(#anchor)``) names a heading of its target page."""
    broken = []
    for link in _LINK.findall(page.read_text(encoding="utf-8")):
        target, anchor = link.split("#", 1)
        path = page if not target else (page.parent / target).resolve()
        if path.suffix != ".md" or not path.is_file():
            continue  # not a page (the nox docs session checks that relative links resolve)
        if anchor not in heading_anchors(path.read_text(encoding="utf-8")):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing headings: {broken}"


_CITATION = re.compile(r'docs/(\w+)\.md,?\s+"([^"\n]+)"')


def _sections(text: str) -> tuple[list[str], set[str]]:
    """Outside fenced blocks, without markdown backticks: the heading texts, and the labels of labelled list
    items (``- Host syncs: ...``) and paragraphs (``**NorMuon state.** ...``), at most four words."""
    fenced = {n for b in fenced_blocks(text, "") for n in range(b.line, b.line + b.code.count("\n") + 2)}
    headings, labels = [], set()
    for n, line in enumerate(text.splitlines(), start=1):
        if n in fenced:
            continue
        line = line.replace("`", "")
        if m := re.match(r"^#{1,6}\s+(.*?)\s*$", line):
            headings.append(m[1])
        elif m := re.match(r"^\s*(?:[-*]\s+)?\*\*([^*]+?)\.?\*\*|^\s*[-*]\s+([^:*]+?):\s", line):
            label = m[1] or m[2]
            if len(label.split()) <= 4:
                labels.add(label)
    return headings, labels


def _cites(sections: tuple[list[str], set[str]], title: str) -> bool:
    """``title`` is a heading, or a heading up to a parenthesis, bracket or colon (``NorMuon`` cites
    ``NorMuon (stage 4) [S §3.2, §4]``), or a label."""
    headings, labels = sections
    return title in labels or any(re.fullmatch(re.escape(title) + r"(\s*[(\[:].*)?", h) for h in headings)


SOURCES = sorted(f for folder in ("reference", "fast", "harness") for f in (ROOT / folder).rglob("*.py"))


def test_code_cites_existing_sections() -> None:
    """A docstring or comment that cites a section (``docs/variants.md, "Decisions"``) names a heading or a
    labelled item of that page, so the prose it points to can be found (and a renamed one fails here)."""
    pages: dict[str, tuple[list[str], set[str]]] = {}
    broken = []
    for source in SOURCES:
        for page, title in _CITATION.findall(source.read_text(encoding="utf-8")):
            path = ROOT / "docs" / f"{page}.md"
            if page not in pages:
                pages[page] = _sections(path.read_text(encoding="utf-8")) if path.is_file() else ([], set())
            if not _cites(pages[page], title):
                broken.append(f'{source.relative_to(ROOT)}: docs/{page}.md "{title}"')
    assert not broken, "citations of missing sections:\n" + "\n".join(broken)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_fence_names_a_known_language(block: Block) -> None:
    assert block.language in LANGUAGES, (
        f"{block.id}: fence language {block.language!r}; use one of {sorted(LANGUAGES)} "
        "(python blocks are executed, the others are not)"
    )


TOML_BLOCKS = [b for b in BLOCKS if b.language == "toml"]


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.id for b in TOML_BLOCKS])
def test_toml_block_is_a_valid_config(block: Block) -> None:
    """A ```toml block parses; one with a ``[sweep]`` table is a valid sweep config on a minimal base."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

    data = tomllib.loads(block.code)
    if "sweep" in data:
        config = pytest.importorskip("muonlab.harness.config")
        config.validate_sweep({"train": {"steps": 10}, **data})


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    if re.search(r"^\s*(import|from) (torch|muonlab\.fast)\b", block.code, re.M):
        pytest.importorskip("torch")  # a NumPy-only install runs the reference blocks
    script = tmp_path / "block.py"
    # Once the block has run to its end, leave without interpreter teardown, where gloo's background threads can
    # abort a process that has destroyed its group ("terminate called without an active exception", exit -6):
    # an exception in the block still exits 1 before this line.
    ending = "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n"
    script.write_text(block.code + ending, encoding="utf-8")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: did not finish within {TIMEOUT_S} s")
    assert proc.returncode == 0, f"{block.id}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
