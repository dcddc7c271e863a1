"""The ``muonlab`` command line (docs/harness.md "Commands").

::

    muonlab train CONFIG [-o key=value ...] [--out RUN_DIR] [--data-dir DIR] [--resume | --force]
    muonlab sweep CONFIG [-o key=value ...] [--out SWEEP_DIR] [--data-dir DIR] [--force]
    muonlab report SWEEP_DIR
    muonlab corpus build [--out FILE] [--work-dir DIR] [--packages-dir DIR] [--verify-only]

CONFIG is a TOML or YAML file, or the name of a shipped config (``tiny_sweep`` = harness/configs/tiny_sweep.toml).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .config import ConfigError, load_run_config, load_sweep_config, parse_cli_overrides, shipped_configs_dir


def resolve_config_path(name: str) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    shipped = shipped_configs_dir() / (name if name.endswith(".toml") else f"{name}.toml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config: no such file {name!r} (nor a shipped config in {shipped_configs_dir()})")


def _data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from .data import default_data_dir

    return default_data_dir()


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = load_run_config(resolve_config_path(args.config), parse_cli_overrides(args.override))
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    summary = train(
        cfg, out, data_dir=_data_dir(args.data_dir), resume=args.resume, force=args.force, progress=not args.no_progress
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns rank 0's summary
        print(
            f"{out}: {summary['status']}; val_loss {summary.get('val_loss')}; "
            f"smoothed train loss {summary.get('final_smoothed_loss')}"
            + (f"; UNSTABLE: {summary['abort_reason']}" if summary.get("unstable") else "")
        )
    return 0 if summary["status"] in ("complete", "stopped") else 3


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    path = resolve_config_path(args.config)
    sweep = load_sweep_config(path, parse_cli_overrides(args.override))
    out = Path(args.out) if args.out else Path("sweeps") / sweep.sweep.name
    command = "muonlab " + " ".join(shlex.quote(a) for a in args.argv)
    csv_path = run_sweep(
        sweep, out, data_dir=_data_dir(args.data_dir), progress=not args.no_progress, force=args.force, command=command
    )
    print(f"{csv_path}\n{out / 'RESULTS.md'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(Path(args.sweep_dir)))
    return 0


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from . import corpus

    name = getattr(corpus, "CORPUS_NAME", "corpus-debian-v1.txt.xz")
    if args.verify_only:
        data_dir = _data_dir(args.data_dir) if (args.data_dir or not (args.out and args.sums)) else None
        path = Path(args.out) if args.out else Path(data_dir or ".") / name
        sums = Path(args.sums) if args.sums else Path(data_dir or ".") / "SHA256SUMS"
        ok = corpus.verify_corpus(path, sums)
        print(f"{path}: {'OK' if ok else 'MISMATCH'} (against {sums})")
        return 0 if ok else 1
    out = Path(args.out) if args.out else Path(name)
    kwargs = {}
    sums = Path(args.sums) if args.sums else (_data_dir(args.data_dir) / "SHA256SUMS" if args.data_dir else None)
    if sums is not None:
        from .tokenizer import read_sha256sums

        kwargs["expected_sha256"] = read_sha256sums(sums).get(out.name) or read_sha256sums(sums).get(name)
    work = Path(args.work_dir) if args.work_dir else out.resolve().parent / ".corpus-work"
    try:
        path = corpus.build_corpus(
            out, work_dir=work, packages_dir=Path(args.packages_dir) if args.packages_dir else None, **kwargs
        )
    except corpus.CorpusMismatchError as exc:
        print(f"muonlab: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="muonlab", description="Train and sweep Muon-family optimizers.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="TOML/YAML config file or shipped config name")
        p.add_argument(
            "-o",
            "--override",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="dotted-key override, e.g. -o optimizer.lr=0.01 (repeatable)",
        )
        p.add_argument("--out", help="output directory")
        p.add_argument("--data-dir", help="data dir (default: harness.data.default_data_dir())")
        p.add_argument("--force", action="store_true", help="overwrite an existing non-empty output dir")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train one run")
    common(p)
    p.add_argument("--resume", action="store_true", help="continue from the run dir's last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="run (or resume) a sweep, then write the report")
    common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write RESULTS.md and plots for a sweep dir")
    p.add_argument("sweep_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("corpus", help="the training corpus")
    csub = p.add_subparsers(dest="corpus_command", required=True)
    b = csub.add_parser("build", help="build (or verify) corpus-debian-v1.txt.xz from Debian packages")
    b.add_argument(
        "--out",
        help="output file (default ./corpus-debian-v1.txt.xz; with --verify-only the file to "
        "check, default DATA_DIR/corpus-debian-v1.txt.xz)",
    )
    b.add_argument("--work-dir", help="scratch dir for downloads and extraction")
    b.add_argument("--packages-dir", help="dir with the already-downloaded .deb files")
    b.add_argument("--data-dir", help="data dir holding SHA256SUMS (and, for --verify-only, the corpus)")
    b.add_argument("--sums", help="SHA256SUMS file to check against")
    b.add_argument("--verify-only", action="store_true", help="only check the file's sha256")
    b.set_defaults(func=cmd_corpus_build)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args))
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"muonlab: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .rundir import RunDirError

        if isinstance(exc, RunDirError):
            print(f"muonlab: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
