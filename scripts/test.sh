#!/usr/bin/env bash
# Runs the test suite in the project's virtualenv (created if missing).
# Usage: scripts/test.sh [pytest args...]
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
exec "$PY" -m pytest -q "$@"
