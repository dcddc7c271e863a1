"""Developer sessions: `nox -s tests` (the README's test command), `lint`, `typecheck`, `docs`,
`kernels_triton`, `tests_isa`, `optax` (these seven, `hf` and the main job are what CI runs), `conformance`, `bench`,
`gpu`.

Every session runs on the Python that launched nox, any of 3.10-3.13; ask for another with
`nox --force-python 3.12 -s tests`. Installs go through `constraints/ci.txt`, the exact versions CI runs (torch
2.13.0 from the local CPU wheel, triton 3.9.0, ...); the package itself states ranges (pyproject.toml, reasons in
docs/install.md). `gpu` installs nothing from an index: it uses the torch, triton and pytest already on the machine.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # nox itself depends on tomli below 3.11
    import tomli as tomllib

nox.options.sessions = ["lint", "tests", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYTHON = None  # None: the interpreter running nox (no pinned version; CI's default python3 is 3.11)
CONSTRAINTS = ROOT / "constraints" / "ci.txt"
CPU_ENV = {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "2"}


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _install(session: nox.Session, *args: str, constraints: Path = CONSTRAINTS) -> None:
    """pip install with CI's exact versions as constraints (they only apply to what the arguments pull in)."""
    session.install("-c", os.fspath(constraints), *args)


def _floor(distribution: str, extra: str) -> str:
    """The lowest version pyproject.toml admits for ``distribution`` in ``extra`` (``triton>=3.6; ...`` -> "3.6")."""
    for requirement in _pyproject()["project"]["optional-dependencies"][extra]:
        match = re.match(rf"\s*{re.escape(distribution)}\s*>=\s*([0-9.]+)", requirement)
        if match:
            return match.group(1)
    raise ValueError(f"pyproject.toml: no '{distribution}>=' floor in the '{extra}' extra")


def _packages() -> list[str]:
    """The `muonlab.*` packages pyproject.toml builds, for `mypy -p` (which recurses into their subpackages)."""
    return [p for p in _pyproject()["tool"]["setuptools"]["packages"] if p.count(".") == 1]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Every CPU test: reference, fast (torch path and Triton kernels under TRITON_INTERPRET=1), harness (with the
    trackers and submitit, whose tests skip where those are missing), packaging."""
    _install(session, ".[fast,harness,dev,track,slurm]")
    session.run(
        "pytest", "conformance", "--ignore=conformance/bench", "-m", "not gpu", "-q", *session.posargs, env=CPU_ENV
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the tree (rules and line length in pyproject.toml)."""
    _install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on every muonlab package, on an editable install in strict mode (a link tree mypy can follow),
    with the optional trackers and submitit, whose imports the harness type-checks."""
    _install(session, "--config-settings", "editable_mode=strict", "-e", ".[fast,harness,track,slurm]", "mypy")
    packages = [arg for package in _packages() for arg in ("-p", package)]
    session.run("mypy", "--strict", *packages, *session.posargs)
    session.run("mypy", "--strict", "scripts/envcheck.py", "scripts/gpu_check.py")


ISAS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
"""CPU instruction sets `tests_isa` caps torch, oneDNN and MKL to, on any x86-64 machine: ``avx2`` is a CPU
without AVX-512 or native bf16 (bf16 matmuls 8-50x slower than fp32, other GEMM kernels, other rounding);
``default`` has no vector kernels at all."""

ISA_SENSITIVE = [
    "conformance/fast",
    "--ignore=conformance/fast/test_fast_budget.py",  # launch and byte counts: the same on any ISA
    "--ignore=conformance/fast/test_fast_meter.py",
    "--ignore=conformance/fast/test_fast_gpu_check.py",
    "conformance/distributed",
    "conformance/harness/test_h_train_features.py",
    "conformance/harness/test_h_runs.py",
    "conformance/harness/test_h_checkpoint.py",
    "conformance/harness/test_h_torchrun.py",
    "conformance/harness/test_h_88m_step.py",
    "conformance/harness/test_h_model.py",
]
"""The tests whose claims depend on the CPU's arithmetic: fast vs reference, bit-identity of the distributed modes
and of resume, the harness's equivalences (micro-batches, torchrun vs one process), and the 88M step's time."""


@nox.session(python=PYTHON)
@nox.parametrize("isa", list(ISAS))
def tests_isa(session: nox.Session, isa: str) -> None:
    """The numerically sensitive tests on a capped instruction set (CI runs ``avx2``): every tolerance and every
    bit-identity claim must hold on CPUs other than the one a test was written on."""
    if platform.machine() not in ("x86_64", "AMD64"):
        session.skip(f"the ISA caps are x86-64's; this machine is {platform.machine()}")
    _install(session, ".[fast,harness,dev]")
    # inductor's cache does not key on the capped ISA: code compiled for AVX-512 would be reused (wrong results)
    cache = Path(session.create_tmp()) / f"inductor-{isa}"
    env = {**CPU_ENV, **ISAS[isa], "TORCHINDUCTOR_CACHE_DIR": os.fspath(cache)}
    session.run(
        "python", "-c", "import torch; print('torch CPU capability:', torch.backends.cpu.get_cpu_capability())", env=env
    )
    # the 2026 family's compile cases check tracing (one graph, no recompiles), the same on any ISA; the 2025
    # presets' compile cases stay, and with them inductor's code for the capped ISA
    session.run("pytest", *ISA_SENSITIVE, "-m", "not gpu and not family_compile", "-q", *session.posargs, env=env)


TRITONS = {"3.6": ["numpy<2.4"], "3.7": []}
"""The older tritons `kernels_triton` runs, each with what its interpreter needs besides CI's pins. 3.6 is the
floor (GPU images ship it); its interpreter turns a runtime loop bound into a Python int with ``int()`` of a
one-element array, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"),
so it runs with numpy 2.3. 3.7 is what PyPI's CUDA torch 2.13.0 requires (Python 3.12 and 3.13). CI's 3.9 runs
in `tests`."""


@nox.session(python=PYTHON)
@nox.parametrize("triton", list(TRITONS))
def kernels_triton(session: nox.Session, triton: str) -> None:
    """The kernel suite (interpreted numerics and the ahead-of-time sm_80/sm_90 compile) on an older triton."""
    floor = _floor("triton", "fast")
    if floor not in TRITONS:
        session.error(f"pyproject.toml's triton floor {floor} is not among kernels_triton's versions {list(TRITONS)}")

    def name(requirement: str) -> str:
        return re.split(r"[=<>!~;\s]", requirement.strip(), maxsplit=1)[0]

    replaced = {"triton", *map(name, TRITONS[triton])}  # this triton and its own needs replace CI's pins of them
    pins = [line for line in CONSTRAINTS.read_text().splitlines() if name(line) not in replaced]
    constraints = Path(session.create_tmp()) / f"constraints-triton-{triton}.txt"
    constraints.write_text("\n".join([*pins, *TRITONS[triton], f"triton=={triton}.*", ""]))
    _install(session, ".[fast]", "pytest", "hypothesis", constraints=constraints)
    session.run(
        "python",
        "-c",
        "import sys, triton; print('triton', triton.__version__); "
        f"sys.exit(0 if triton.__version__.startswith('{triton}.') else 'expected triton {triton}.x')",
    )
    session.run("pytest", "conformance/kernels", "-q", *session.posargs, env=CPU_ENV)


def _floor_pins(extras: list[str]) -> list[str]:
    """``name==floor`` (marker kept) for every ``name>=floor`` in the base dependencies and ``extras``."""
    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins = []
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9._-]+)\s*>=\s*([0-9.]+)\s*(;.*)?$", requirement)
        if match:
            pins.append(f"{match.group(1)}=={match.group(2)}{match.group(3) or ''}")
    return pins


@nox.session(python=PYTHON)
def tests_oldest(session: nox.Session) -> None:
    """The CPU suite on the floors pyproject.toml states (numpy, triton, the harness's libraries, pytest, hypothesis).

    torch is the exception: CI's CPU wheel (constraints/ci.txt) stands in for the torch floor, which only runs on
    the GPU machine (no CPU wheel of it here). Other dependencies of those packages resolve to their newest.
    Arguments replace the test paths: `nox -s tests_oldest -- conformance/harness`.
    """
    torch_pin = [line for line in CONSTRAINTS.read_text().splitlines() if re.match(r"torch==", line)]
    tested = ("pytest==", "hypothesis==")  # of the dev tools, only the test runner and hypothesis are exercised here
    dev = [p for p in _floor_pins(["dev"]) if p.startswith(tested)]
    pins = [p for p in _floor_pins(["fast", "harness"]) if not p.startswith("torch==")] + dev + torch_pin
    constraints = Path(session.create_tmp()) / "constraints-oldest.txt"
    constraints.write_text("\n".join([*pins, ""]))
    session.log("floors: " + ", ".join(pins))
    session.install("-c", os.fspath(constraints), ".[fast,harness]", "pytest", "hypothesis")
    paths = session.posargs or ["conformance", "--ignore=conformance/bench", "--ignore=conformance/packaging"]
    session.run("pytest", *paths, "-m", "not gpu", "-q", env=CPU_ENV)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """The property suite holding fast to reference (and both to peers), with the thorough hypothesis profile."""
    _install(session, ".[fast,harness,dev]")
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
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks (ratios, never asserted times); prints the markdown table for docs/benchmarks.md."""
    _install(session, ".[fast,harness,dev]")
    session.run("pytest", "conformance/bench", "--benchmark-only", "-q", *session.posargs)
    session.run("python", "conformance/bench/report.py")


@nox.session(python=PYTHON, venv_params=["--system-site-packages"])
def gpu(session: nox.Session) -> None:
    """The suite on CUDA (kernels compiled, not interpreted), on the machine's own torch/triton/pytest: fetches nothing.

    The session's environment sees the interpreter's site-packages; muonlab goes in with the offline install
    (README, "A GPU machine as it comes") and scripts/envcheck.py refuses versions outside the supported ranges.
    """
    session.install("--no-index", "--no-deps", "--no-build-isolation", "-e", ".")
    session.run("python", "scripts/envcheck.py", "--extras", "fast", "--need", "pytest", "--need", "hypothesis")
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
    """Peer checks against optax.contrib.muon and its orthogonalize_via_newton_schulz, every preconditioning and
    adaptive=True (jax and optax, pinned in constraints/ci.txt, installed in this session only)."""
    _install(session, ".[fast,harness,dev]", "jax", "optax")
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


@nox.session(python=PYTHON)
def hf(session: nox.Session) -> None:
    """Muon on Hugging Face models: GPT-2 (Conv1D) and Llama trained with transformers' Trainer (the `hf` marker);
    transformers and accelerate installed in this session only, at CI's versions (constraints/ci.txt)."""
    _install(session, ".[fast,harness,dev]", "transformers", "accelerate")
    session.run("pytest", "conformance", "--ignore=conformance/bench", "-m", "hf", "-q", *session.posargs, env=CPU_ENV)
