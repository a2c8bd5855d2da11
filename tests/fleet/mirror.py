#!/usr/bin/env python3
"""The fleet benchmark's HTTP mirror: static files first, `git http-backend` for the rest.

    tests/fleet/mirror.py ROOT PORT

Serves the bare repos under ROOT as a web server in front of a git host is usually set up (the
"accelerated static" layout of git-http-backend(1)): a path without a query that names a file is
that file, with a strong ETag and 304 to If-None-Match; a smart request (`?service=`, POST
`git-upload-pack`) goes to `git http-backend` as CGI. One request per connection, a thread each.
CGI children are waited for, so this process's /proc stat (utime+stime+cutime+cstime) is the
mirror's whole CPU. GET /_stats answers the request counts as JSON.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.realpath(sys.argv[1])
PORT = int(sys.argv[2])
COUNTS = {"static_200": 0, "static_304": 0, "smart_get": 0, "smart_post": 0, "other": 0}
LOCK = threading.Lock()


def count(kind):
    with LOCK:
        COUNTS[kind] += 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/_stats":
            with LOCK:
                self.reply(200, {"Content-Type": "application/json"}, json.dumps(COUNTS).encode())
            return
        if query or path.endswith("/git-upload-pack"):
            self.cgi(path, query)
            return
        file = os.path.realpath(os.path.join(ROOT, path.lstrip("/")))
        if not file.startswith(ROOT + "/") or not os.path.isfile(file):
            count("other")
            self.reply(404, {}, b"")
            return
        with open(file, "rb") as f:
            body = f.read()
        etag = '"%s"' % hashlib.sha1(body).hexdigest()
        if self.headers.get("If-None-Match") == etag:
            count("static_304")
            self.reply(304, {"ETag": etag}, b"")
        else:
            count("static_200")
            self.reply(200, {"ETag": etag, "Content-Type": "application/octet-stream"}, body)

    def do_POST(self):
        path, _, query = self.path.partition("?")
        self.cgi(path, query)

    def cgi(self, path, query):
        count("smart_get" if self.command == "GET" else "smart_post")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
            "REMOTE_ADDR": self.client_address[0],
        }
        for header, var in [("Git-Protocol", "GIT_PROTOCOL"), ("Content-Encoding", "HTTP_CONTENT_ENCODING")]:
            if self.headers.get(header):
                env[var] = self.headers[header]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, content = out.partition(b"\r\n\r\n")
        if not _:
            head, _, content = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name] = value.strip()
        self.reply(status, headers, content)

    def reply(self, status, headers, body):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


Server(("127.0.0.1", PORT), Handler).serve_forever()
