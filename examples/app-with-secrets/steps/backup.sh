#!/bin/sh
# Backs the data up before the migration can change it: one tar per commit, the newest 5 kept.
set -eu
mkdir -p "$APP_ROOT/backups"
backup="$APP_ROOT/backups/data-$TROOPS_RUN_ID-$(printf %.12s "$TROOPS_COMMIT").tar"
tar -C "$APP_ROOT" -cf "$backup" data
ls -1t "$APP_ROOT"/backups/data-*.tar | tail -n +6 | xargs -r rm --
echo "backup: $backup"
