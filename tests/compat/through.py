#!/usr/bin/python3
"""Fetches every http-oddities case through the gateway and reads the answer
the way Chromium would, then compares with expected.toml.

    /usr/bin/python3 through.py --server 198.19.0.2 [--payload clean|eicar]
                                [--cases id,id,...] [--dir DIR]

Run in the rig's client namespace: the gateway steers ports 80 and 8081 and
the corpus server (server.py) answers behind it.  The gateway re-frames
every response it delivers, so what arrives is plain HTTP/1.1; this client
applies to it what Chromium applies on its side of the socket:

  * the request carries Chromium's own headers for plain http (it offers
    only gzip and deflate: br and zstd go to https and localhost only);
  * 204/205/304 render as nothing (Chromium keeps the old page);
  * a redirect is followed once (the Location case);
  * Content-Encoding: a value with `"=;*` or a token with inner whitespace
    fails; any unknown, empty or identity token shows the raw bytes; br or
    zstd (not offered) fail; gzip (first member, no trailer check, cut
    streams fine) and deflate (zlib or raw) are undone in reverse order;
  * an answer the gateway made itself (X-Gateway-Error, a refusal, or
    X-Gateway-Block-Id, a block page) counts as refused.

Prints one JSON line per case ({"id","expected","outcome","eicar_seen"}) and a
last line {"summary": …}.  python3-brotli is used only to look for the test
file inside whatever was delivered (br itself fails over plain http).
"""

import argparse
import json
import os
import socket
import sys
import tomllib
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

REQUEST = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUpgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Encoding: gzip, deflate\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n"
)
EICAR_MARK = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"


def holds_eicar(data, depth=0):
    """Whether the test file is in `data`, also inside gzip, zlib, raw
    deflate or brotli layers (a body shown raw may still be compressed)."""
    if EICAR_MARK in data:
        return True
    if depth >= 3 or not data:
        return False
    import brotli
    for undo in (gunzip, lambda d: zlib.decompressobj(15).decompress(d),
                 lambda d: zlib.decompressobj(-15).decompress(d), brotli.decompress):
        try:
            inner = undo(data)
        except Exception:  # noqa: BLE001 - not that layer
            continue
        if inner and inner != data and holds_eicar(inner, depth + 1):
            return True
    return False


def fetch(server, port, path, timeout):
    """Raw bytes of the whole exchange (the gateway closes after it)."""
    s = socket.create_connection((server, port), timeout=timeout)
    try:
        s.sendall(REQUEST.format(path=path, host=f"{server}:{port}" if port != 80 else server).encode())
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def parse(raw):
    """(status, headers dict of lists, body) of the gateway's final answer
    (interim 1xx answers skipped, as Chromium skips them), or None."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    code = head.split(b"\r\n", 1)[0].split(b" ")
    if len(code) > 1 and code[1].isdigit() and 100 <= int(code[1]) < 200 and code[1] != b"101":
        return parse(body)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        return None
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        headers.setdefault(name.strip().lower().decode("latin-1"), []).append(value.strip())
    if "content-length" in headers and int(parts[1]) not in (204, 304):
        n = int(headers["content-length"][0])
        if len(body) < n:
            return None
        body = body[:n]
    return int(parts[1]), headers, body


def gunzip(data):
    """Chromium's GzipSourceStream: magic and method checked, flags walked,
    the first member inflated, the trailer and what follows ignored; a cut
    stream yields what it holds."""
    if len(data) < 10:
        return b""
    if data[0] != 0x1F or data[1] != 0x8B or data[2] != 8:
        raise ValueError("not gzip")
    flags, at = data[3], 10
    if flags & 4:
        at += 2 + int.from_bytes(data[at:at + 2], "little")
    for bit in (8, 16):
        if flags & bit:
            end = data.find(b"\0", at)
            if end < 0:
                return b""
            at = end + 1
    if flags & 2:
        at += 2
    return zlib.decompressobj(-15).decompress(data[at:])


def inflate(data):
    """Chromium's deflate: zlib; when the zlib header fails, a dummy zlib
    header (78 01) is put in front and the data inflated again, so that
    four bytes after a raw stream are checked as its adler32."""
    try:
        return zlib.decompressobj(15).decompress(data)
    except zlib.error:
        return zlib.decompressobj(15).decompress(b"\x78\x01" + data)


def render(status, headers, body):
    """What Chromium shows for this answer, or "reject"."""
    if status in (204, 205, 304):
        return b""
    values = [v for raw in headers.get("content-encoding", []) for v in raw.split(b",")]
    if any(any(c in v for c in b'"=;*') for v in values) or any(b" " in v.strip() or b"\t" in v.strip() for v in values):
        return "reject"
    tokens = [v.strip().lower() for v in values]
    if not tokens or any(t not in (b"gzip", b"x-gzip", b"deflate", b"br", b"zstd") for t in tokens):
        return body
    try:
        for t in reversed(tokens):
            if t in (b"br", b"zstd"):
                return "reject"
            body = gunzip(body) if t in (b"gzip", b"x-gzip") else inflate(body)
    except (ValueError, zlib.error):
        return "reject"
    return body


def outcome(server, port, path, timeout):
    """("refused" | "reject" | body bytes, every byte received)."""
    seen = b""
    for _ in range(2):  # one redirect hop
        raw = fetch(server, port, path, timeout)
        seen += raw
        got = parse(raw)
        if got is None:
            return ("reject" if not raw else "unparseable"), seen
        status, headers, body = got
        if "x-gateway-error" in headers or "x-gateway-block-id" in headers:
            return "refused", seen
        location = headers.get("location", [b""])[0].decode("latin-1")
        if 300 <= status < 400 and location.startswith("/"):
            path = location
            continue
        return render(status, headers, body), seen
    return "reject", seen


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True)
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../data/http-oddities"))
    ap.add_argument("--payload", default="clean", choices=sorted(corpus.PAYLOADS))
    ap.add_argument("--cases", default="")
    ap.add_argument("--timeout", type=float, default=15)
    args = ap.parse_args()
    with open(os.path.join(args.dir, "expected.toml"), "rb") as f:
        expected = tomllib.load(f)
    only = {c for c in args.cases.split(",") if c}
    payload = corpus.PAYLOADS[args.payload]
    s = {"cases": 0, "accepted_direct": 0, "identical": 0, "refused": 0, "other": 0, "eicar_delivered": 0,
         "rejected_direct": 0, "rejected_but_delivered": 0}
    for cid, meta in expected.items():
        if only and cid not in only:
            continue
        exp_t = meta["chromium"]
        exp = "reject" if exp_t == "reject" else corpus.expand_text(exp_t, payload)
        got, seen = outcome(args.server, int(meta.get("port", 80)), f"/case/{cid}?v={args.payload}", args.timeout)
        eicar = holds_eicar(seen) or (isinstance(got, bytes) and holds_eicar(got))
        s["cases"] += 1
        s["eicar_delivered"] += int(eicar)
        if exp != "reject":
            s["accepted_direct"] += 1
            if got == exp:
                s["identical"] += 1
            elif got == "refused":
                s["refused"] += 1
            else:
                s["other"] += 1
        else:
            s["rejected_direct"] += 1
            s["rejected_but_delivered"] += int(got not in ("reject", "refused"))
        line = {"id": cid, "family": meta["family"], "expected": show(exp), "outcome": show(got), "eicar_seen": eicar}
        print(json.dumps(line), flush=True)
    print(json.dumps({"summary": s}), flush=True)


def show(v):
    if isinstance(v, str):
        return v
    r = repr(v)
    return r if len(r) <= 100 else r[:100] + f"... ({len(v)} bytes)"


if __name__ == "__main__":
    main()
