#!/bin/sh
# A stand-in restart (a real plan would run `systemctl restart app`): leaves a marker with the
# commit the app now runs.
set -eu
echo "$TROOPS_COMMIT" > "$APP_ROOT/restarted"
echo "restarted at $(printf %.12s "$TROOPS_COMMIT")"
