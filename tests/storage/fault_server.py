"""fault_server.py - a small HTTP server for the storage tests: serves files with
Range support and injects the faults that nginx will not (a transfer cut midway,
HTTP 500s, a slow link, a bearer token check, redirects), or, with --proxy, forwards
S3 requests to moto and fails the first N PUTs with a 500.

    python fault_server.py --root DIR --port N            # files under DIR
    python fault_server.py --proxy http://127.0.0.1:M --port N

Paths (file mode), NAME relative to DIR:
    /files/NAME              the file, Range supported
    /cut/BYTES/NAME          the first request for this path stops after BYTES bytes
    /fail/K/NAME             the first K requests for this path answer 500
    /slow/BPS/NAME           sent at about BPS bytes per second
    /auth/TOKEN/NAME         needs "Authorization: Bearer TOKEN", else 401
    /nolength/NAME           sent without Content-Length (connection close ends it)
    /redirect?to=URL         302 to URL;  /loop: a redirect to itself
    /_stats                  JSON list of the requests seen: method, path, range, auth
    /_reset                  forgets requests and per-path counters
    /_control/cut_next/N     the next N file responses (any path) stop halfway (ops/chaos.py)
Proxy mode: POST /_control/fail_puts/N makes the next N PUTs answer 500;
POST /_control/slow_puts/N/MS delays the next N PUTs by MS milliseconds; /_stats as above.
Binds 127.0.0.1 only."""
import argparse
import http.client
import json
import os
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = []
COUNTS = {}
STATE = {"fail_puts": 0, "slow_puts": 0, "slow_ms": 0, "cut_next": 0}


def record(handler):
    with LOCK:
        STATS.append({
            "method": handler.command,
            "path": handler.path,
            "range": handler.headers.get("Range"),
            "auth": handler.headers.get("Authorization") is not None,
        })
        COUNTS[handler.path] = COUNTS.get(handler.path, 0) + 1
        return COUNTS[handler.path]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."
    proxy = None

    def log_message(self, fmt, *args):  # quiet: pytest shows failures, not traffic
        pass

    def send_plain(self, status, text, headers=()):
        body = text.encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ---- file mode ----
    def do_GET(self):
        if self.proxy:
            return self.forward()
        if self.path == "/_stats":
            with LOCK:
                return self.send_plain(200, json.dumps(STATS))
        if self.path == "/_reset":
            with LOCK:
                STATS.clear()
                COUNTS.clear()
            return self.send_plain(200, "ok")
        if self.path.startswith("/_control/cut_next/"):
            with LOCK:
                STATE["cut_next"] = int(self.path.rsplit("/", 1)[1])
            return self.send_plain(200, "ok")
        n = record(self)
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        if url.path == "/redirect":
            to = urllib.parse.parse_qs(url.query).get("to", [""])[0]
            return self.send_plain(302, "moved", [("Location", to)])
        if url.path == "/loop":
            return self.send_plain(302, "again", [("Location", "/loop")])
        kind = parts[1] if len(parts) > 2 else ""
        if kind == "files":
            with LOCK:
                cut = STATE["cut_next"] > 0
                if cut:
                    STATE["cut_next"] -= 1
            name = "/".join(parts[2:])
            if cut:
                path = os.path.join(self.root, name)
                half = os.path.getsize(path) // 2 if os.path.isfile(path) else None
                return self.send_file(name, cut=half)
            return self.send_file(name)
        if kind == "cut" and len(parts) > 3:
            return self.send_file("/".join(parts[3:]), cut=int(parts[2]) if n == 1 else None)
        if kind == "fail" and len(parts) > 3:
            if n <= int(parts[2]):
                return self.send_plain(500, "injected failure")
            return self.send_file("/".join(parts[3:]))
        if kind == "slow" and len(parts) > 3:
            return self.send_file("/".join(parts[3:]), rate=int(parts[2]))
        if kind == "auth" and len(parts) > 3:
            if self.headers.get("Authorization") != "Bearer " + parts[2]:
                return self.send_plain(401, "unauthorized")
            return self.send_file("/".join(parts[3:]))
        if kind == "nolength":
            return self.send_file("/".join(parts[2:]), no_length=True)
        return self.send_plain(404, "not found")

    def send_file(self, name, cut=None, rate=None, no_length=False):
        path = os.path.realpath(os.path.join(self.root, name))
        if not path.startswith(os.path.realpath(self.root) + os.sep) or not os.path.isfile(path):
            return self.send_plain(404, "not found")
        size = os.path.getsize(path)
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= size:
                return self.send_plain(416, "range not satisfiable", [("Content-Range", "bytes */%d" % size)])
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", '"%x-%x"' % (size, int(os.path.getmtime(path))))
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
        if no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(size - start))
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            sent, left = 0, size - start
            chunk = max(1024, rate // 20) if rate else 1 << 16
            try:
                while left > 0:
                    want = min(chunk, left)
                    if cut is not None and sent + want > cut:
                        want = cut - sent
                    if want <= 0:
                        break
                    data = f.read(want)
                    self.wfile.write(data)
                    self.wfile.flush()
                    sent += len(data)
                    left -= len(data)
                    if rate:
                        time.sleep(len(data) / rate)
            except (BrokenPipeError, ConnectionResetError):
                return
        if cut is not None and left > 0:
            self.close_connection = True  # the client sees a short body

    # ---- proxy mode ----
    def do_PUT(self):
        return self.forward()

    def do_POST(self):
        if self.path.startswith("/_control/fail_puts/"):
            STATE["fail_puts"] = int(self.path.rsplit("/", 1)[1])
            return self.send_plain(200, "ok")
        if self.path.startswith("/_control/slow_puts/"):
            n, ms = self.path.split("/")[3:5]
            with LOCK:
                STATE["slow_puts"], STATE["slow_ms"] = int(n), int(ms)
            return self.send_plain(200, "ok")
        if self.path.startswith("/_control/cut_next/"):
            return self.do_GET()
        return self.forward()

    def do_DELETE(self):
        return self.forward()

    def do_HEAD(self):
        return self.forward()

    def forward(self):
        if not self.proxy:
            return self.send_plain(405, "method not allowed")
        if self.path == "/_stats":
            with LOCK:
                return self.send_plain(200, json.dumps(STATS))
        record(self)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.command == "PUT":
            with LOCK:
                fail = STATE["fail_puts"] > 0
                if fail:
                    STATE["fail_puts"] -= 1
            if fail:
                xml = "<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                return self.send_plain(500, xml)
            with LOCK:
                slow = STATE["slow_ms"] if STATE["slow_puts"] > 0 else 0
                if slow:
                    STATE["slow_puts"] -= 1
            if slow:
                time.sleep(slow / 1000.0)
        target = urllib.parse.urlsplit(self.proxy)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        # Headers go on unchanged (Host included): the signature covers them.
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in ("expect", "connection", "transfer-encoding"):
                conn.putheader(k, v)
        if "Content-Length" not in self.headers and body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", default=".")
    ap.add_argument("--proxy")
    a = ap.parse_args()
    Handler.root = a.root
    Handler.proxy = a.proxy
    ThreadingHTTPServer.daemon_threads = True
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.serve_forever()


if __name__ == "__main__":
    main()
