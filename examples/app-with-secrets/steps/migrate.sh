#!/bin/sh
# A stand-in migration: it reads the database password from the env file (as a real migration
# tool would) and records the schema version in the data.
set -eu
. "$APP_ROOT/app.env"
test -n "$DB_PASSWORD"
echo "connecting as $DB_USER with password $DB_PASSWORD"
echo 2 > "$APP_ROOT/data/schema_version"
echo "migrated to schema 2"
