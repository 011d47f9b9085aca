#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs CLM, then
#   ./run.sh demo       the main job on the embedded default (SQLite, local sandbox providers)
#   ./run.sh test       ruff, mypy, then the whole test suite on SQLite and PostgreSQL
#   ./run.sh clm ARGS   any clm command
#   ./run.sh bench NAME a benchmark script from benchmarks/
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.installed"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -qq --upgrade pip
  fi
  # Reinstall when the dependency list changes.
  local want; want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e ".[test]"
    echo "$want" > "$STAMP"
  fi
}

start_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
      for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
  fi
}

export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_LEVEL=${PREFECT_LOGGING_LEVEL:-WARNING}

cmd=${1:-help}; shift || true
case "$cmd" in
  demo) setup; exec "$VENV/bin/clm" demo "$@" ;;
  test)
    setup
    start_postgres
    # Lint and types first: a failure stops here, before the slower tests.
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy" clm clm_core flows tasks
    # Two workers: the machines have two cores; each worker gets its own databases.
    exec "$VENV/bin/python" -m pytest -n 2 --dist loadgroup "$@" ;;
  clm) setup; exec "$VENV/bin/clm" "$@" ;;
  bench) setup; start_postgres; name=$1; shift; exec "$VENV/bin/python" "benchmarks/$name.py" "$@" ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
