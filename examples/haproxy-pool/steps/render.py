#!/usr/bin/env python3
"""haproxy.cfg for the app servers the fleet says exist now: every peer with role `app` whose news
is not stale and that exports `addr`. A peer's export is its word, not ours: an address that is
not a plain host:port is left out (and said on stderr), so no peer can write haproxy config.

    render.py FLEET.json LISTEN > haproxy.cfg
"""
import json
import re
import sys

ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
NAME = re.compile(r"[^A-Za-z0-9_.-]")


def main():
    fleet_file, listen = sys.argv[1], sys.argv[2]
    with open(fleet_file) as f:
        peers = json.load(f)
    servers = []
    for peer in sorted(peers, key=lambda p: p["host"]):
        addr = peer.get("exports", {}).get("addr", "").strip()
        if "app" not in peer.get("roles", []) or peer.get("stale") or not addr:
            continue
        if not ADDR.fullmatch(addr):
            print(f"render: {peer['host']!r} exports addr {addr!r}, which is no host:port; left out", file=sys.stderr)
            continue
        servers.append((NAME.sub("_", peer["host"]), addr))
    print("# Rendered by steps/render.py from the fleet's exports: do not edit.")
    print("defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n")
    print(f"frontend pool\n    bind {listen}\n    default_backend app\n")
    print("backend app\n    balance roundrobin")
    for name, addr in servers:
        print(f"    server {name} {addr} check inter 1s")


if __name__ == "__main__":
    main()
