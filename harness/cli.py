"""The ``muonlab`` command line (docs/harness.md "Commands").

::

    muonlab train CONFIG [-o key=value ...] [--out RUN_DIR] [--data-dir DIR] [--resume | --force] [--max-minutes M]
    muonlab sweep CONFIG [-o key=value ...] [--out SWEEP_DIR] [--data-dir DIR] [--force] [--jobs N]
                 [--devices I,J] [--max-minutes M] [--track T] [--executor slurm --slurm-* ...]
    muonlab sweep --status SWEEP_DIR
    muonlab report SWEEP_DIR
    muonlab corpus build [--out FILE] [--work-dir DIR] [--packages-dir DIR] [--verify-only]

CONFIG is a TOML or YAML file, or the name of a shipped config (``tiny_sweep`` = harness/configs/tiny_sweep.toml).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .config import (
    ConfigError,
    SweepConfig,
    load_run_config,
    load_sweep_config,
    parse_cli_overrides,
    shipped_configs_dir,
    validate_sweep,
)
from .track import TRACKERS


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
        cfg,
        out,
        data_dir=_data_dir(args.data_dir),
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
        max_minutes=args.max_minutes,
        track=args.track,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns rank 0's summary
        print(
            f"{out}: {summary['status']}; val_loss {summary.get('val_loss')}; "
            f"smoothed train loss {summary.get('final_smoothed_loss')}"
            + (f"; UNSTABLE: {summary['abort_reason']}" if summary.get("unstable") else "")
        )
    return 0 if summary["status"] in ("complete", "stopped") else 3


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepStopped, run_sweep
    from .workers import parse_devices

    if args.status is not None:
        sweep, out = _stored_sweep(Path(args.status), args)
    elif args.config is None:
        raise ConfigError("config: give a sweep config (or --status SWEEP_DIR for a sweep submitted to Slurm)")
    else:
        path = resolve_config_path(args.config)
        sweep = load_sweep_config(path, parse_cli_overrides(args.override))
        out = Path(args.out) if args.out else Path("sweeps") / sweep.sweep.name
    command = "muonlab " + " ".join(shlex.quote(a) for a in args.argv)
    try:
        csv_path = run_sweep(
            sweep,
            out,
            data_dir=_data_dir(args.data_dir),
            progress=not args.no_progress,
            force=args.force,
            command=command,
            jobs=args.jobs,
            devices=parse_devices(args.devices) if args.devices is not None else None,
            max_minutes=args.max_minutes,
            track=args.track,
            executor=args.executor,
            slurm=_slurm_options(args),
        )
    except SweepStopped as exc:
        print(f"muonlab: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{csv_path}\n{out / 'RESULTS.md'}")
    return 0


def _stored_sweep(sweep_dir: Path, args: argparse.Namespace) -> tuple[SweepConfig, Path]:
    """The sweep config stored in SWEEP_DIR/sweep.json, for ``--status`` (which takes no CONFIG)."""
    from .slurm import stored_options

    if args.config is not None or args.override or args.out:
        raise ConfigError("--status: takes SWEEP_DIR only (no CONFIG, -o or --out)")
    meta = sweep_dir / "sweep.json"
    if not meta.is_file():
        raise ConfigError(f"--status: {sweep_dir} is not a sweep dir (no sweep.json)")
    if stored_options(sweep_dir) is None:
        raise ConfigError(
            f"--status: {sweep_dir} was never submitted to Slurm; run `muonlab sweep CONFIG --out {sweep_dir}` "
            "to resume it here"
        )
    stored = json.loads(meta.read_text())["sweep"]
    return validate_sweep({**stored["base"], "sweep": stored["sweep"]}), sweep_dir


def _slurm_options(args: argparse.Namespace) -> Any:
    """`slurm.SlurmOptions` from the --slurm-* flags, or None when none was given (a stored set is reused)."""
    given = {
        "partition": args.slurm_partition,
        "account": args.slurm_account,
        "time_min": args.slurm_time,
        "gpus_per_run": args.gpus_per_run,
        "cpus_per_run": args.cpus_per_run,
    }
    if all(v is None for v in given.values()):
        return None
    from .slurm import SlurmOptions

    return SlurmOptions(**{k: v for k, v in given.items() if v is not None})


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(Path(args.sweep_dir)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .pretrained import export_run

    print(export_run(Path(args.run_dir), Path(args.out)))
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
    build_sums = Path(args.sums) if args.sums else (_data_dir(args.data_dir) / "SHA256SUMS" if args.data_dir else None)
    expected: str | None = corpus.CORPUS_SHA256
    if build_sums is not None:
        from .tokenizer import read_sha256sums

        listed = read_sha256sums(build_sums)
        expected = listed.get(out.name) or listed.get(name)
    work = Path(args.work_dir) if args.work_dir else out.resolve().parent / ".corpus-work"
    try:
        built = corpus.build_corpus(
            out,
            work_dir=work,
            packages_dir=Path(args.packages_dir) if args.packages_dir else None,
            expected_sha256=expected,
        )
    except corpus.CorpusMismatchError as exc:
        print(f"muonlab: error: {exc}", file=sys.stderr)
        return 1
    print(built)
    return 0


def _default_data_dir_text() -> str:
    """What ``--data-dir`` defaults to here, for the help text (the rule when no data dir is found)."""
    from .data import default_data_dir

    try:
        return str(default_data_dir())
    except (FileNotFoundError, ValueError):
        return "$MUONLAB_DATA_DIR, else ../shared/data next to the repository; none found here"


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="muonlab", description="Train and sweep Muon-family optimizers.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    data_default = _default_data_dir_text()

    def common(p: argparse.ArgumentParser, out_help: str, *, config_optional: bool = False) -> None:
        p.add_argument(
            "config",
            nargs="?" if config_optional else None,
            help="TOML/YAML config file, or a shipped config name (e.g. tiny_sweep)",
        )
        p.add_argument(
            "-o",
            "--override",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="dotted-key override, e.g. -o optimizer.lr=0.01 (repeatable; default: none)",
        )
        p.add_argument("--out", metavar="DIR", help=out_help)
        p.add_argument("--data-dir", metavar="DIR", help=f"data dir (default: {data_default})")
        p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
        p.add_argument(
            "--track",
            action="append",
            choices=TRACKERS,
            help="mirror metrics.jsonl and the config into a tracker (repeatable; W&B offline unless "
            "WANDB_MODE says otherwise; default: the config's train.track / sweep.track, none)",
        )

    p = sub.add_parser("train", help="train one run", description="Train one run into a run dir.")
    common(p, "run dir (default: runs/<the config's name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run dir's newest intact checkpoint")
    mode.add_argument("--force", action="store_true", help="delete a non-empty run dir and start over")
    p.add_argument(
        "--max-minutes",
        type=_positive_minutes,
        metavar="M",
        help="wall-clock budget: stop (checkpointed, resumable with --resume) after the step that crosses "
        "M minutes (default: no budget)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sweep",
        help="run a sweep, then write the report",
        description="Run a sweep, then write its report. Running the same sweep into the same dir again "
        "resumes it: finished runs are kept, interrupted ones continue from their last checkpoint.",
    )
    common(p, "sweep dir (default: sweeps/<the config's sweep.name>)", config_optional=True)
    p.add_argument(
        "--status",
        metavar="SWEEP_DIR",
        help="one pass over a sweep submitted to Slurm (collect, resubmit failures, advance phases, report), "
        "with its stored config and Slurm options; no CONFIG (default: off)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        help="where runs train: local (this machine, --jobs at once) or slurm (job arrays through submitit; "
        "the command returns once they are queued) (default: slurm for a sweep dir submitted before, else local)",
    )
    p.add_argument("--slurm-partition", metavar="P", help="Slurm partition (default: the cluster's default)")
    p.add_argument("--slurm-account", metavar="A", help="Slurm account to charge (default: your default)")
    p.add_argument(
        "--slurm-time",
        type=_positive_int,
        metavar="MIN",
        help="time limit of each run's job in minutes; a run that hits it is requeued and resumes (default: 60)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=_nonnegative_int,
        metavar="G",
        help="GPUs per run's job; more than 1 runs it under torchrun (default: 0)",
    )
    p.add_argument("--cpus-per-run", type=_positive_int, metavar="C", help="CPUs per run's job (default: 1)")
    p.add_argument(
        "--force",
        action="store_true",
        help="delete the contents of a sweep dir that holds another sweep or other files, and start over "
        "(default: refused)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="runs trained at once, each in its own worker process; the CPU cores are split between them, "
        "on CUDA each is pinned to a device (default: the config's sweep.jobs, 1 = in this process)",
    )
    p.add_argument(
        "--devices",
        metavar="I,J,...",
        help="CUDA devices the workers are pinned to, as indices into the visible ones (default: all visible)",
    )
    p.add_argument(
        "--max-minutes",
        type=_positive_minutes,
        metavar="M",
        help="wall-clock budget for the whole sweep: the runs under way stop checkpointed at M minutes and "
        "the same command resumes them (default: no budget)",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write RESULTS.md and plots for a sweep dir")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep dir written by muonlab sweep")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "export",
        help="write a run's weights as model.safetensors + config.json",
        description="Write the newest intact checkpoint's weights of RUN_DIR in the Hugging Face layout "
        "(OUT/model.safetensors and OUT/config.json); train.init_from = OUT starts a run from them.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run dir written by muonlab train or sweep")
    p.add_argument("--out", required=True, help="the export directory (created)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("corpus", help="the training corpus")
    csub = p.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND", help="one of:")
    b = csub.add_parser("build", help="build (or verify) corpus-debian-v1.txt.xz from Debian packages")
    b.add_argument(
        "--out",
        metavar="FILE",
        help="output file (default ./corpus-debian-v1.txt.xz; with --verify-only the file to "
        "check, default DATA_DIR/corpus-debian-v1.txt.xz)",
    )
    b.add_argument(
        "--work-dir", metavar="DIR", help="scratch dir for downloads and extraction (default: OUT's dir/.corpus-work)"
    )
    b.add_argument(
        "--packages-dir", metavar="DIR", help="dir with the already-downloaded .deb files (default: download them)"
    )
    b.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"data dir holding SHA256SUMS and, for --verify-only, the corpus (default: {data_default})",
    )
    b.add_argument("--sums", metavar="FILE", help="SHA256SUMS file to check against (default: DATA_DIR/SHA256SUMS)")
    b.add_argument("--verify-only", action="store_true", help="only check the file's sha256 (default: build)")
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
