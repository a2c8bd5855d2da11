#!/bin/sh
# Renders haproxy.cfg from the app nodes' exports (TROOPS_FLEET), checks it with `haproxy -c`,
# puts it in place and reloads the running haproxy (master-worker mode: SIGUSR2 to the master,
# whose pid is in haproxy.pid). A config haproxy refuses fails the step; the old one stays.
set -eu
dir="$TROOPS_STATE_DIR/haproxy-pool"
mkdir -p "$dir"
listen=$(cat "$dir/listen" 2>/dev/null || echo "*:80")
python3 ./steps/render.py "$TROOPS_FLEET" "$listen" > "$dir/haproxy.cfg.new"
haproxy -c -q -f "$dir/haproxy.cfg.new"
mv "$dir/haproxy.cfg.new" "$dir/haproxy.cfg"
grep -E '^ *server ' "$dir/haproxy.cfg" || echo "balancer: no app server is known yet"
if [ -s "$dir/haproxy.pid" ] && kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null; then
    kill -USR2 "$(cat "$dir/haproxy.pid")"
    echo "balancer: haproxy reloaded"
else
    echo "balancer: haproxy is not running; start it with: haproxy -W -f $dir/haproxy.cfg -p $dir/haproxy.pid"
fi
