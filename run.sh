#!/usr/bin/env bash
# gdat's one entry point for a fresh machine: sets up .venv idempotently, then
#   ./run.sh demo   tunes the built-in demo model with gdat-run (2 ranks, emulated network)
#   ./run.sh test   runs the test suite (three test files at a time), then the compatibility pass;
#                   with pytest arguments, only pytest with them
#   ./run.sh compat the compatibility pass alone: gdat on the oldest torch it tunes with and the newest
#                   installable one, each in its own venv (.venv-torch-<release>, made with uv)
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

# the compatibility pass's torch releases: the oldest gdat tunes with, the newest installable here
COMPAT_TORCH="2.11.0 2.14.1"

compat_setup() {  # $1: a torch release; its venv, idempotently (uv links files from its cache)
  local venv=".venv-torch-$1" stamp want
  if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$1')" 2>/dev/null; then
    rm -rf "$venv"
    "$VENV/bin/uv" venv -q --python "$PY" "$venv"
    VIRTUAL_ENV="$venv" "$VENV/bin/uv" pip install -q "torch==$1"
  fi
  stamp="$venv/.gdat-installed"
  want=$(cat setup.py | sha256sum | cut -c1-16)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    VIRTUAL_ENV="$venv" "$VENV/bin/uv" pip install -q -e ".[compat]"
    echo "$want" > "$stamp"
  fi
}

compat() {  # every release at once, one pytest each; prints each one's summary, fails if one failed
  local v status=0
  for v in $COMPAT_TORCH; do compat_setup "$v"; done
  for v in $COMPAT_TORCH; do
    GDAT_COMPAT_TORCH="$v" PATH="$PWD/.venv-torch-$v/bin:$PATH" ".venv-torch-$v/bin/python" -m pytest -q \
      -p no:cacheprovider tests/compat tests/test_torch_ddp_suite.py tests/test_plan.py > ".venv-torch-$v/compat.log" 2>&1 &
  done
  for v in $COMPAT_TORCH; do
    if ! wait -n; then status=1; fi
  done
  for v in $COMPAT_TORCH; do
    if grep -qE "(failed|error)" ".venv-torch-$v/compat.log"; then tail -n 40 ".venv-torch-$v/compat.log"; fi
    echo "compatibility pass, torch $v: $(tail -n 1 ".venv-torch-$v/compat.log")"
  done
  return $status
}

export PATH="$PWD/$VENV/bin:$PATH"
cmd="${1:-}"
shift || true
case "$cmd" in
  env) setup ;;
  demo) setup; exec "$PY" -m launch.demo "$@" ;;
  test)
    setup
    if [ $# -gt 0 ]; then exec "$PY" -m pytest -q -p no:cacheprovider -n 3 --dist loadgroup tests "$@"; fi
    "$PY" -m pytest -q -p no:cacheprovider -n 3 --dist loadgroup tests
    compat ;;
  compat) setup; compat ;;
  *) echo "usage: ./run.sh demo|test|compat|env" >&2; exit 2 ;;
esac
