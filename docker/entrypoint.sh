#!/bin/sh
# Entrypoint of the Sealmem image; it also runs directly on a host with `sealmem` on PATH.
#
#   sealmem-entrypoint [serve] [--option ...]   wait for the database, `sealmem migrate`, then
#                                               `exec sealmem serve --host $SEALMEM_HOST --port $SEALMEM_PORT ...`
#   sealmem-entrypoint COMMAND ARGS...          any other `sealmem` command (keygen, migrate, tenant create NAME,
#                                               rotate-master-key, reindex, export, ...), or a program on PATH
#
# Settings come from SEALMEM_* variables (.env.example lists them all). Secrets come from files, never from the
# image: SEALMEM_MASTER_KEY_FILE, SEALMEM_TOKEN_SECRET_FILE (Docker secrets under /run/secrets/), and
# PGPASSWORD_FILE, whose content is exported as PGPASSWORD for libpq so the database URL carries no password.
# Variables of this script only (not app settings):
#   PGPASSWORD_FILE   file holding the PostgreSQL password (optional)
#   DB_WAIT_SECONDS   how long `serve` waits for a PostgreSQL database to accept connections (default 60)
set -eu

say() {
    printf '%s\n' "sealmem-entrypoint: $*" >&2
}

if [ -n "${PGPASSWORD_FILE:-}" ]; then
    if [ ! -r "$PGPASSWORD_FILE" ]; then
        say "PGPASSWORD_FILE=$PGPASSWORD_FILE is not readable by uid $(id -u)"
        exit 1
    fi
    PGPASSWORD=$(cat "$PGPASSWORD_FILE")
    export PGPASSWORD
    unset PGPASSWORD_FILE
fi

for var in SEALMEM_MASTER_KEY_FILE SEALMEM_TOKEN_SECRET_FILE; do
    eval "file=\${$var:-}"
    # shellcheck disable=SC2154  # set by the eval above
    if [ -n "$file" ] && [ ! -r "$file" ]; then
        say "$var=$file is not readable by uid $(id -u) (see 'Secrets' in docs/deploy.md)"
        exit 1
    fi
done

command=${1:-serve}
case "$command" in
    serve)
        [ "$#" -gt 0 ] && shift
        ;;
    -*)
        ;;  # options only: serve with them
    *)
        # A program (sh, python, ...): an executable file on PATH, not a shell builtin such as `export`.
        case "$(command -v "$command" 2>/dev/null || true)" in
            */sealmem) ;;
            */*) exec "$@" ;;
        esac
        [ "$command" = sealmem ] && shift
        exec sealmem "$@"
        ;;
esac

# Wait for PostgreSQL (a no-op for the embedded SQLite database). Invalid settings fail here, at once.
python - <<'PY'
import os
import sys
import time

from sqlalchemy import text

from memory_store.db import make_engine
from service.settings import Settings

try:
    settings = Settings()
except ValueError as exc:
    sys.exit(f"sealmem-entrypoint: invalid settings: {exc}")
if settings.resolved_database_url.startswith("sqlite"):
    sys.exit(0)
deadline = time.monotonic() + float(os.environ.get("DB_WAIT_SECONDS") or 60)
engine = make_engine(settings)
last = ""
while True:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        break
    except Exception as exc:  # any connection error: retry until the deadline
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if time.monotonic() >= deadline:
            sys.exit(f"sealmem-entrypoint: database not reachable: {reason}")
        if reason != last:
            print(f"sealmem-entrypoint: waiting for the database: {reason}", file=sys.stderr, flush=True)
            last = reason
        time.sleep(2)
engine.dispose()
PY

# Idempotent; on PostgreSQL under an advisory lock, so replicas starting together migrate one at a time.
sealmem migrate

exec sealmem serve --host "${SEALMEM_HOST:-0.0.0.0}" --port "${SEALMEM_PORT:-8080}" "$@"
