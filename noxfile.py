"""Developer sessions: `nox -s tests` (what CI runs), `conformance`, `typecheck`, `bench`, `docs`, `gpu`, `optax`.

torch is pinned to 2.13.0 (`pip install torch==2.13.0` picks the local CPU wheel where one is configured
through PIP_FIND_LINKS; a looser pin would download CUDA wheels).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

nox.options.sessions = ["tests", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYTHON = "3.11"
CPU_ENV = {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "2"}


def _install(session: nox.Session, extras: str = "fast,harness,dev") -> None:
    session.install(f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Every CPU test: reference, fast (torch path and Triton kernels under TRITON_INTERPRET=1), harness."""
    _install(session)
    session.run(
        "pytest", "conformance", "--ignore=conformance/bench", "-m", "not gpu", "-q", *session.posargs, env=CPU_ENV
    )


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """The property suite holding fast to reference (and both to peers), with the thorough hypothesis profile."""
    _install(session)
    env = {**CPU_ENV, "HYPOTHESIS_PROFILE": "thorough"}
    session.run(
        "pytest",
        "conformance/reference",
        "conformance/fast",
        "conformance/kernels",
        "-m",
        "not gpu",
        "-q",
        *session.posargs,
        env=env,
    )


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on muonlab.reference and muonlab.fast, as installed (the source folders map onto the namespace)."""
    session.install(".[fast]", "mypy>=1.10")
    session.run("mypy", "--strict", "-p", "muonlab.reference", "-p", "muonlab.fast")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks (ratios, never asserted times); prints the markdown table for docs/benchmarks.md."""
    _install(session)
    session.run("pytest", "conformance/bench", "--benchmark-only", "-q", *session.posargs)
    session.run("python", "conformance/bench/report.py")


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """The same suite on CUDA (kernels compiled, not interpreted) plus the GPU-only checks; needs a CUDA device."""
    _install(session)
    session.run("python", "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')")
    session.run(
        "pytest",
        "conformance",
        "--ignore=conformance/bench",
        "-q",
        *session.posargs,
        env={"MUONLAB_DEVICE": "cuda", "MUONLAB_TRITON": "1"},
    )


@nox.session(python=PYTHON)
def optax(session: nox.Session) -> None:
    """Peer check against optax.contrib.muon (jax installed in this session only)."""
    _install(session)
    session.install("jax", "optax")
    session.run("pytest", "conformance/fast", "-m", "peer", "-q", *session.posargs, env=CPU_ENV)


_LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """Link-check README.md and docs/: every relative link must point at a file in the repository."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    if broken:
        session.error("broken links:\n  " + "\n  ".join(broken))
    session.log(f"docs: all relative links resolve ({os.fspath(ROOT / 'docs')})")
