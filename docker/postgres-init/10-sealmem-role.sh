#!/bin/sh
# Sealmem's own PostgreSQL role and database, so the app never connects as a superuser.
#
# The postgres image runs this once, as its superuser, when it initialises an empty data volume
# (docker-compose.yml mounts docker/postgres-init at /docker-entrypoint-initdb.d). It is idempotent, so it can
# also be run by hand, as a superuser other than the app role, against a cluster initialised before it existed:
#   APP_DB_PASSWORD_FILE=secrets/pg_password PGHOST=... PGUSER=postgres sh docker/postgres-init/10-sealmem-role.sh
#
# It makes, in order:
#   - the role APP_DB_USER (default sealmem): LOGIN, and NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
#     NOBYPASSRLS; its password is the content of APP_DB_PASSWORD_FILE (default /run/secrets/pg_password, read
#     like the app's entrypoint reads PGPASSWORD_FILE: trailing newlines dropped), stored as a SCRAM hash;
#   - the database APP_DB_NAME (default sealmem), owned by that role, so the role owns schema public (PostgreSQL
#     15+: pg_database_owner) and everything the migrations create in it; CONNECT and TEMP revoked from PUBLIC;
#   - the vector extension in that database, installed by the superuser: the migrations' `CREATE EXTENSION IF
#     NOT EXISTS vector` then finds it, which needs no privilege;
#   - PUBLIC's CONNECT revoked on the maintenance database `postgres` (this cluster serves Sealmem only), so the
#     role reaches no database but its own and those created later (whose tables it cannot read).
# Connection: POSTGRES_USER/POSTGRES_DB when set (inside the image), otherwise libpq's PG* variables.
# Everything runs in a subshell: should the image source this file (it does when the execute bit got lost),
# its options, arguments and exit stay out of the image's own entrypoint.
(
    set -eu

    die() {
        printf '%s\n' "sealmem postgres init: $*" >&2
        exit 1
    }

    app_user=${APP_DB_USER:-sealmem}
    app_db=${APP_DB_NAME:-sealmem}
    password_file=${APP_DB_PASSWORD_FILE:-/run/secrets/pg_password}

    [ -r "$password_file" ] || die "APP_DB_PASSWORD_FILE=$password_file is not readable by uid $(id -u)"
    APP_DB_PASSWORD=$(cat "$password_file")
    [ -n "$APP_DB_PASSWORD" ] || die "APP_DB_PASSWORD_FILE=$password_file is empty"
    export APP_DB_PASSWORD  # psql reads it with \getenv: never on a command line

    if [ -n "${POSTGRES_USER:-}" ]; then
        set -- --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}"
    else
        set --
    fi

    psql -X -q -v ON_ERROR_STOP=1 -v app_user="$app_user" -v app_db="$app_db" "$@" <<'SQL'
SET client_min_messages = warning;
\getenv app_password APP_DB_PASSWORD
SELECT rolsuper AS is_superuser, rolname = :'app_user' AS is_app_user
FROM pg_roles WHERE rolname = current_user \gset
\if :is_app_user
DO $$ BEGIN RAISE EXCEPTION 'run this as a superuser other than the app role (connected as %)', current_user; END $$;
\endif
\if :is_superuser
\else
DO $$ BEGIN RAISE EXCEPTION 'run this as a superuser (connected as %)', current_user; END $$;
\endif

-- Keep the password out of the server log, whatever its logging settings.
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET log_min_error_statement = 'panic';
SET password_encryption = 'scram-sha-256';

SELECT format('CREATE ROLE %I', :'app_user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format(
    'ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD %L',
    :'app_user', :'app_password'
) \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_db') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'app_db', :'app_user') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'app_db') \gexec
SELECT 'REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC' WHERE :'app_db' <> 'postgres' \gexec

\connect :"app_db"
CREATE EXTENSION IF NOT EXISTS vector;
SQL

    printf '%s\n' "sealmem postgres init: role $app_user owns database $app_db (vector extension installed)" >&2
)
