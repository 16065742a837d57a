#!/usr/bin/python3
"""Serves the http-oddities corpus: raw, deliberately malformed HTTP/1.x responses.

    /usr/bin/python3 server.py --bind 10.77.0.1 --dir /work/main/tests/data/http-oddities

GET /case/<id>?v=<payload> answers with tests/data/http-oddities/<id>.http
expanded for that payload (`clean` or `eicar`, default clean), byte for byte.
If the case says `close = true` the server half-closes right after sending;
otherwise the connection stays open for further requests until it has been
idle for --idle-timeout seconds.  Any other path gets a small well-formed
200 response whose body is "path:<path>" (the target of the redirect cases).

Needs only /usr/bin/python3 (3.11: tomllib) and Debian's python3-brotli.
"""

import argparse
import os
import socket
import sys
import threading
import time
import tomllib
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402


class Corpus:
    def __init__(self, directory):
        self.dir = directory
        self.lock = threading.Lock()
        self.mtime = None
        self.expected = {}

    def case(self, cid):
        """(template bytes, close flag) or None.  expected.toml is re-read when it changes."""
        path = os.path.join(self.dir, "expected.toml")
        with self.lock:
            m = os.stat(path).st_mtime_ns
            if m != self.mtime:
                with open(path, "rb") as f:
                    self.expected = tomllib.load(f)
                self.mtime = m
            meta = self.expected.get(cid)
        if meta is None or not all(c.isalnum() or c == "-" for c in cid):
            return None
        with open(os.path.join(self.dir, cid + ".http"), "rb") as f:
            return f.read(), bool(meta.get("close", False))


def log(args, *msg):
    if args.verbose:
        print(time.strftime("%H:%M:%S"), *msg, file=sys.stderr, flush=True)


def read_head(conn, buf):
    """Read one request head; returns (head, rest) or (None, buf) on EOF/timeout."""
    while True:
        for sep in (b"\r\n\r\n", b"\n\n"):
            i = buf.find(sep)
            if i >= 0:
                return buf[:i], buf[i + len(sep):]
        if len(buf) > 65536:
            return None, buf
        try:
            data = conn.recv(65536)
        except (socket.timeout, OSError):
            return None, buf
        if not data:
            return None, buf
        buf += data


def close_gracefully(conn):
    """FIN (not RST): stop sending, drain what the client may still send, then close."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if not conn.recv(65536):
                break
    except OSError:
        pass
    finally:
        conn.close()


def handle(conn, addr, port, args, cases):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            conn.settimeout(args.idle_timeout)
            head, buf = read_head(conn, buf)
            if head is None:
                log(args, f"{addr} :{port} idle/EOF, closing")
                break
            line = head.split(b"\n", 1)[0].strip().decode("latin-1")
            parts = line.split(" ")
            target = parts[1] if len(parts) > 1 else "/"
            u = urllib.parse.urlsplit(target)
            q = urllib.parse.parse_qs(u.query)
            payload = corpus.PAYLOADS.get(q.get("v", ["clean"])[0], corpus.PAYLOADS["clean"])
            found = cases.case(u.path[len("/case/"):]) if u.path.startswith("/case/") else None
            if found is None:
                body = ("path:" + u.path).encode("latin-1", "replace")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
                log(args, f"{addr} :{port} {line!r} -> fallback")
                continue
            template, close = found
            data = corpus.expand(template, payload, keep_flush=True)
            pieces = corpus.split_flush(data)
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(args.flush_delay)
                if piece:
                    conn.sendall(piece)
            log(args, f"{addr} :{port} {line!r} -> {len(data)} bytes, close={close}")
            if close:
                close_gracefully(conn)
                return
    except OSError as e:
        log(args, f"{addr} :{port} error {e}")
    close_gracefully(conn)


def listen(port, args):
    s = socket.socket(socket.AF_INET6 if ":" in args.bind else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind, port))
    s.listen(64)
    return s


def serve(s, port, args, cases):
    while True:
        conn, addr = s.accept()
        threading.Thread(target=handle, args=(conn, addr[0] + ":" + str(addr[1]), port, args, cases),
                         daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bind", required=True, help="address to listen on")
    ap.add_argument("--dir", required=True, help="corpus directory (expected.toml + <id>.http)")
    ap.add_argument("--ports", default="80,8081", help="comma-separated ports (default 80,8081)")
    ap.add_argument("--idle-timeout", type=float, default=3.0,
                    help="close a kept-open connection after this many idle seconds (default 3)")
    ap.add_argument("--flush-delay", type=float, default=0.2,
                    help="pause at each {FLUSH} in seconds (default 0.2)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    cases = Corpus(args.dir)
    cases.case("")  # load expected.toml now: fail early if it is broken
    ports = [int(p) for p in args.ports.split(",") if p]
    socks = [listen(p, args) for p in ports]  # bind everything first: fail early
    for s, p in list(zip(socks, ports))[1:]:
        threading.Thread(target=serve, args=(s, p, args, cases), daemon=True).start()
    print(f"serving {args.dir} on {args.bind} ports {ports}", file=sys.stderr, flush=True)
    serve(socks[0], ports[0], args, cases)


if __name__ == "__main__":
    main()
