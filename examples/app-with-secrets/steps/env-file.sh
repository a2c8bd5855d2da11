#!/bin/sh
# Installs the app's env file from the secret, readable by its owner only. The plaintext is in
# $TROOPS_SECRETS only for this run; the copy in $APP_ROOT is the app's to keep.
set -eu
mkdir -p "$APP_ROOT/data"
install -m 0600 "$TROOPS_SECRETS/app_env" "$APP_ROOT/app.env.new"
mv "$APP_ROOT/app.env.new" "$APP_ROOT/app.env"
echo "env file: $(wc -l < "$APP_ROOT/app.env") lines"
