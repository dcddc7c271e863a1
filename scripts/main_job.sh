#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv with muonlab (CPU torch, CI's versions from constraints/ci.txt)
# and run the tiny sweep on the embedded corpus. Usage: bash scripts/main_job.sh [SWEEP_DIR]   (default: sweeps/tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-sweeps/tiny}"
if [ -d /opt/wheels ]; then export PIP_FIND_LINKS="${PIP_FIND_LINKS:-/opt/wheels}"; fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints/ci.txt -e ".[fast,harness]"
# one worker per core (each run uses one torch thread: train.threads = 1 in the config)
jobs="$(nproc)"
start=$SECONDS
.venv/bin/muonlab sweep harness/configs/tiny_sweep.toml --out "$out" --jobs "$jobs"
echo "main job: sweep ($jobs workers) and report in $((SECONDS - start)) s (README: the figures at 1 and 2 workers)"
