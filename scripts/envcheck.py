"""Check that this Python and its installed packages lie inside muonlab's supported ranges.

Usage (after the offline install `pip install --no-deps --no-build-isolation -e .`, see docs/install.md)::

    python scripts/envcheck.py                       # Python, numpy, and the `fast` extra (torch, triton on Linux)
    python scripts/envcheck.py --extras fast,harness # also the harness's libraries
    python scripts/envcheck.py --need pytest --need hypothesis   # these must be installed too (for the test suite)

The ranges are read from the installed muonlab's own metadata (``Requires-Python`` and ``Requires-Dist``, written
from pyproject.toml), so pyproject.toml is the one place they are stated. Exit status 0 when everything fits,
1 with one line per problem otherwise. Standard library only: it has to speak where torch is missing, or too old
to import.

Versions are compared on their release numbers only: a pre-release or local build such as NVIDIA's
``2.11.0a0+nv25.10`` counts as 2.11.0, so a vendor build of a supported release passes.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PROJECT = "muonlab"
INSTALL_HINT = "pip install --no-deps --no-build-isolation -e ."
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*?)\s*(?:;(?P<marker>.*))?$"
)
_CLAUSE = re.compile(r"^\s*\(?\s*(?P<var>[a-z_]+)\s*(?P<op>==|!=|<=|>=|<|>)\s*[\"'](?P<value>[^\"']*)[\"']\s*\)?\s*$")
_SPECIFIER = re.compile(r"^\s*(?P<op>==|!=|<=|>=|<|>|~=)\s*(?P<version>[0-9][0-9A-Za-z.+*!-]*)\s*$")
_RELEASE = re.compile(r"^\s*v?(?:\d+!)?(?P<release>\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Requirement:
    """One ``Requires-Dist`` line: a distribution, its version specifiers and its environment marker clauses."""

    name: str
    specifiers: tuple[tuple[str, str], ...]
    clauses: tuple[tuple[str, str, str], ...]

    @property
    def extra(self) -> str | None:
        """The extra this requirement belongs to (``extra == "fast"``), or None for a base dependency."""
        for var, op, value in self.clauses:
            if var == "extra" and op == "==":
                return value
        return None

    def range_text(self) -> str:
        """The specifiers as written, for messages (``>=2.11``)."""
        return ",".join(op + version for op, version in self.specifiers) or "any version"


def normalize(name: str) -> str:
    """A distribution name in PEP 503 normal form (``PyYAML`` -> ``pyyaml``, ``a_b.c`` -> ``a-b-c``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a PEP 440 version (``2.11.0a0+nv25.10`` -> (2, 11, 0)); pre/post/local parts dropped."""
    match = _RELEASE.match(version)
    if match is None:
        raise ValueError(f"version: cannot read a release number from {version!r}")
    return tuple(int(part) for part in match.group("release").split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def satisfies(version: str, op: str, bound: str) -> bool:
    """Whether ``version`` meets one specifier ``op bound``, comparing release numbers (PEP 440 order for releases)."""
    if op == "~=":
        lower = release(bound)
        if len(lower) < 2:
            raise ValueError(f"specifier: '~={bound}' needs at least two release numbers")
        prefix = lower[:-1]
        return satisfies(version, ">=", bound) and release(version)[: len(prefix)] == prefix
    if bound.endswith(".*"):
        prefix = release(bound[:-2])
        matches = release(version)[: len(prefix)] == prefix
        if op == "==":
            return matches
        if op == "!=":
            return not matches
        raise ValueError(f"specifier: '{op}{bound}' (a wildcard only goes with == or !=)")
    have, want = _padded(release(version), release(bound))
    comparisons: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
        "==": lambda x, y: x == y,
        "!=": lambda x, y: x != y,
        ">=": lambda x, y: x >= y,
        "<=": lambda x, y: x <= y,
        ">": lambda x, y: x > y,
        "<": lambda x, y: x < y,
    }
    if op not in comparisons:
        raise ValueError(f"specifier: unknown operator {op!r}")
    return comparisons[op](have, want)


def parse_requirement(line: str) -> Requirement:
    """Parse one ``Requires-Dist`` value: ``name[extras] specs ; clause and clause ...``.

    Markers may join comparisons with ``and`` only (what setuptools writes for this project's pyproject.toml);
    anything else raises, naming the line, so a new kind of marker cannot be checked wrongly in silence.
    """
    match = _REQUIREMENT.match(line)
    if match is None:
        raise ValueError(f"requirement: cannot parse {line!r}")
    specifiers: list[tuple[str, str]] = []
    spec_text = match.group("spec").strip().strip("()")
    for part in filter(None, (p.strip() for p in spec_text.split(","))):
        spec = _SPECIFIER.match(part)
        if spec is None:
            raise ValueError(f"requirement: cannot parse the version specifier {part!r} in {line!r}")
        specifiers.append((spec.group("op"), spec.group("version")))
    clauses: list[tuple[str, str, str]] = []
    marker = (match.group("marker") or "").strip()
    if marker:
        if re.search(r"\bor\b", marker):
            raise ValueError(f"requirement: markers joined with 'or' are not supported: {line!r}")
        for text in re.split(r"\band\b", marker):
            clause = _CLAUSE.match(text)
            if clause is None:
                raise ValueError(f"requirement: cannot parse the marker clause {text.strip()!r} in {line!r}")
            clauses.append((clause.group("var"), clause.group("op"), clause.group("value")))
    return Requirement(normalize(match.group("name")), tuple(specifiers), tuple(clauses))


def build_requirements(pyproject: Path) -> list[str]:
    """The ``[build-system] requires`` entries of a checkout's pyproject.toml (none when there is no such file).

    Read with a regular expression, not a TOML parser, so that this works on Python 3.10 (no tomllib) too.
    """
    if not pyproject.is_file():
        return []
    section = re.search(r"^\[build-system\](.*?)(?=^\[)", pyproject.read_text(encoding="utf-8") + "\n[", re.M | re.S)
    requires = re.search(r"^requires\s*=\s*\[(.*?)\]", section.group(1) if section else "", re.M | re.S)
    return re.findall(r"[\"']([^\"']+)[\"']", requires.group(1)) if requires else []


def environment() -> dict[str, str]:
    """The marker variables this checker evaluates, for the running interpreter (PEP 508 names)."""
    return {
        "python_version": ".".join(str(n) for n in sys.version_info[:2]),
        "python_full_version": platform.python_version(),
        "platform_system": platform.system(),
        "sys_platform": sys.platform,
        "platform_machine": platform.machine(),
        "os_name": os.name,
        "implementation_name": sys.implementation.name,
    }


def applies(req: Requirement, extras: Iterable[str], env: dict[str, str]) -> bool:
    """Whether ``req`` is in force here: its extra (if any) is requested and every other clause holds in ``env``."""
    wanted = set(extras)
    for var, op, value in req.clauses:
        if var == "extra":
            if op != "==":
                raise ValueError(f"marker: 'extra {op} ...' is not supported (requirement {req.name})")
            if value not in wanted:
                return False
            continue
        if var not in env:
            raise ValueError(f"marker: unknown variable {var!r} (requirement {req.name})")
        if var.startswith("python"):
            if not satisfies(env[var], op, value):
                return False
        elif op in ("==", "!="):
            if (env[var] == value) != (op == "=="):
                return False
        else:
            raise ValueError(f"marker: {var} {op} {value!r} is not supported (requirement {req.name})")
    return True


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``ok`` False means a problem the user has to fix."""

    ok: bool
    text: str


VersionLookup = Callable[[str], "str | None"]


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check(
    requires: Sequence[str],
    requires_python: str | None,
    extras: Iterable[str],
    need: Iterable[str] = (),
    *,
    python_version: str | None = None,
    env: dict[str, str] | None = None,
    lookup: VersionLookup = installed_version,
) -> list[Finding]:
    """Check the interpreter and the installed distributions against muonlab's metadata.

    ``requires``: the ``Requires-Dist`` lines; ``requires_python``: the ``Requires-Python`` value; ``extras``: the
    extras whose requirements apply; ``need``: further distribution names that must be installed, inside the range
    any of muonlab's extras gives them (e.g. pytest from ``dev``). ``python_version``, ``env`` and ``lookup`` default
    to the running interpreter and are parameters so that the checker can be tested without changing the machine.
    """
    extras = list(extras)
    env = environment() if env is None else env
    python_version = env["python_full_version"] if python_version is None else python_version
    findings: list[Finding] = []
    if requires_python:
        bad = [
            op + v
            for op, v in (_spec(p) for p in requires_python.split(",") if p.strip())
            if not satisfies(python_version, op, v)
        ]
        if bad:
            findings.append(Finding(False, f"python {python_version} is outside the supported range {requires_python}"))
        else:
            findings.append(Finding(True, f"python {python_version} ({requires_python})"))
    parsed = [parse_requirement(line) for line in requires]
    known = {req.extra for req in parsed if req.extra is not None}
    unknown = sorted(set(extras) - known)
    if unknown:
        raise ValueError(f"extras: {', '.join(unknown)} not among muonlab's extras ({', '.join(sorted(known))})")
    chosen = [req for req in parsed if applies(req, extras, env)]
    for name in need:
        wanted = normalize(name)
        ranged = [req for req in parsed if req.name == wanted]
        if not ranged:
            chosen.append(Requirement(wanted, (), ()))
        chosen.extend(req for req in ranged if req not in chosen)
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for req in chosen:
        if (req.name, req.specifiers) in seen:
            continue
        seen.add((req.name, req.specifiers))
        findings.append(_check_one(req, lookup))
    return findings


def _spec(text: str) -> tuple[str, str]:
    match = _SPECIFIER.match(text)
    if match is None:
        raise ValueError(f"requires-python: cannot parse {text!r}")
    return match.group("op"), match.group("version")


def _check_one(req: Requirement, lookup: VersionLookup) -> Finding:
    where = f" (extra '{req.extra}')" if req.extra else ""
    version = lookup(req.name)
    if version is None:
        return Finding(False, f"{req.name} is not installed; muonlab needs {req.name}{req.range_text()}{where}")
    failed = [op + bound for op, bound in req.specifiers if not satisfies(version, op, bound)]
    if failed:
        return Finding(
            False, f"{req.name} {version} is outside the supported range {req.range_text()}{where} (fails {failed[0]})"
        )
    return Finding(True, f"{req.name} {version} ({req.range_text()})")


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per check and return 0 when all pass, 1 otherwise (2 for a usage error)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--extras",
        default="fast",
        help="comma-separated extras whose requirements must be met (default: fast; e.g. fast,harness,dev)",
    )
    parser.add_argument(
        "--need",
        action="append",
        default=[],
        metavar="NAME",
        help="a further distribution that must be installed (repeatable), e.g. pytest, hypothesis",
    )
    args = parser.parse_args(argv)
    try:
        meta = metadata.metadata(PROJECT)
    except metadata.PackageNotFoundError:
        print(
            f"FAIL {PROJECT} is not installed in this Python ({sys.executable}); from the repository root, without "
            f"fetching anything: {sys.executable} -m {INSTALL_HINT}"
        )
        build = build_requirements(PYPROJECT)
        if build:  # that install builds with the setuptools already here: say now whether it can
            findings = check(build, None, [], lookup=installed_version)
            for finding in findings:
                print(("ok   " if finding.ok else "FAIL ") + finding.text + " (builds the offline install)")
        return 1
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    try:
        python_range = (meta.get_all("Requires-Python") or [None])[0]
        findings = check(meta.get_all("Requires-Dist") or [], python_range, extras, args.need)
    except ValueError as exc:
        print(f"envcheck: {exc}", file=sys.stderr)
        return 2
    for finding in findings:
        print(("ok   " if finding.ok else "FAIL ") + finding.text)
    problems = sum(not f.ok for f in findings)
    if problems:
        print(f"envcheck: {problems} problem(s); supported ranges and why: docs/install.md")
        return 1
    print(f"envcheck: {PROJECT} {meta['Version']} with extras [{','.join(extras)}]: every version is in range")
    return 0


if __name__ == "__main__":
    sys.exit(main())
