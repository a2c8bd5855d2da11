#!/usr/bin/env python3
"""The webapp: serves <root>/public, where root is the release link troops switches (resolved on
every request, so a switch is seen at once). /health is a page like any other: a release whose
build did not make it answers 404, and troops rolls the node back.

    server.py --root /var/lib/troops/current --port 8080
"""
import argparse
import functools
import http.server
import os


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # quiet: the journal needs no line per probe
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/var/lib/troops/current")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    handler = functools.partial(Handler, directory=os.path.join(args.root, "public"))
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    print(f"serving {args.root}/public on http://{args.bind}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
