#!/usr/bin/env bash
# `airflow standalone` for this checkout (README, "Locally with `airflow standalone`"): scheduler,
# API server, DAG processor and triggerer, run by one command and stopped cleanly by Ctrl-C.
#
# - standalone starts each component as `airflow` from PATH, so this checkout's .venv/bin goes
#   first (`.venv/bin/airflow standalone` alone fails: FileNotFoundError: 'airflow').
# - A terminal's Ctrl-C reaches every process of the foreground process group. Every component
#   would then get SIGINT from the terminal and, at the same time, the SIGTERM that standalone
#   sends when it shuts down; on that pair Airflow 3.3.2's scheduler, DAG processor or triggerer
#   often never exit (4 of 5 stops hung here). So standalone runs in a process group of its own
#   and this script passes Ctrl-C to it alone: standalone stops each component with one signal.
#   A second Ctrl-C kills whatever is left.
set -euo pipefail
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$checkout/.venv/bin:$PATH"
if ! command -v airflow >/dev/null; then
  echo "standalone.sh: no airflow in $checkout/.venv/bin: run \`make venv\` first" >&2
  exit 2
fi
set -m  # background jobs get process groups of their own, and keep the default SIGINT handling
airflow standalone &
pid=$!
kill_group() { kill -KILL -- "-$pid" 2>/dev/null || true; }
stop() {
  trap kill_group INT TERM
  kill -INT "$pid" 2>/dev/null || true
}
trap stop INT TERM
while true; do
  status=0
  wait "$pid" || status=$?  # returns early, above 128, when Ctrl-C runs the trap
  kill -0 "$pid" 2>/dev/null || break
done
kill_group  # any component standalone left behind
exit "$status"
