#!/usr/bin/env bash
# gdat's one entry point for a fresh machine: sets up .venv idempotently, then
#   ./run.sh demo   tunes the built-in demo model with gdat-run (2 ranks, emulated network)
#   ./run.sh test   runs the test suite (two test files at a time; pytest options pass through)
#   ./run.sh env    only sets up .venv
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  # torch first, pinned, so nothing later can pull a CUDA build onto a CPU machine
  if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0
  fi
  stamp="$VENV/.gdat-installed"
  want=$(cat setup.py | sha256sum | cut -c1-16)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$PY" -m pip install -q -e ".[test,plot,mpi]"
    echo "$want" > "$stamp"
  fi
}

export PATH="$PWD/$VENV/bin:$PATH"
cmd="${1:-}"
shift || true
case "$cmd" in
  env) setup ;;
  demo) setup; exec "$PY" -m launch.demo "$@" ;;
  test) setup; exec "$PY" -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup tests "$@" ;;
  *) echo "usage: ./run.sh demo|test|env" >&2; exit 2 ;;
esac
