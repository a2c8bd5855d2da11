#!/bin/sh
# `current` now points at this release. The server reads every request through `current`, so new
# pages are live already; a new server.py needs a restart, which systemd does where it runs it.
set -eu
if [ -d /run/systemd/system ] && systemctl cat webapp.service >/dev/null 2>&1; then
    systemctl try-restart webapp.service
fi
echo "active: $(cat "${TROOPS_CURRENT}/public/version")"
