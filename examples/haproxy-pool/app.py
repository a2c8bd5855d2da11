#!/usr/bin/env python3
"""The app: answers every GET with the host it runs on. At start it writes the address it listens
on to --addr-file (atomically), which the node's `app` step exports to the balancer.

    app.py --name app-1 --bind 127.0.0.1 --port 8080 --addr-file /var/lib/troops/haproxy-pool/app.addr
"""
import argparse
import http.server
import os


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--addr-file", required=True)
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hello from {args.name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # quiet: the journal needs no line per request
            pass

    server = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    addr = f"{args.bind}:{server.server_address[1]}"
    os.makedirs(os.path.dirname(args.addr_file), exist_ok=True)
    with open(args.addr_file + ".tmp", "w") as f:
        f.write(addr + "\n")
    os.replace(args.addr_file + ".tmp", args.addr_file)
    print(f"serving on http://{addr}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
