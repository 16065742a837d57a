#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/.

Run with Debian's python3 (zlib, gzip and python3-brotli):
    /usr/bin/python3 fuzz/make_seeds.py
Deterministic: the same files every time (gzip mtime 0), so re-running it
changes nothing in git.
"""

import gzip
import os
import shutil
import struct
import sys
import zlib

import brotli

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(s):
    """Text with \\n line ends, as bytes with CRLF line ends."""
    return s.replace("\n", "\r\n").encode("latin-1")


# ---------------------------------------------------------------- http_head
def http_head():
    t = "http_head"
    heads = {
        "get": "GET /index.html HTTP/1.1\nHost: www.example.com\nUser-Agent: curl/7.88.1\nAccept: */*\n\n",
        "get-absolute": "GET http://www.example.com/a?b=c HTTP/1.1\nHost: www.example.com\nConnection: keep-alive\n\n",
        "get-10-keepalive": "GET / HTTP/1.0\nConnection: Keep-Alive\n\n",
        "get-10": "GET / HTTP/1.0\n\n",
        "post-cl": "POST /upload HTTP/1.1\nHost: a\nContent-Type: application/octet-stream\nContent-Length: 68\n\n",
        "post-chunked": "POST /upload HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nExpect: 100-continue\n\n",
        "te-and-cl": "POST / HTTP/1.1\nHost: a\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
        "two-cl": "POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 6\n\n",
        "cl-list": "POST / HTTP/1.1\nHost: a\nContent-Length: 5, 5\n\n",
        "cl-plus": "POST / HTTP/1.1\nHost: a\nContent-Length: +5\n\n",
        "te-gzip-chunked": "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n",
        "te-chunked-gzip": "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: gzip\n\n",
        "te-identity": "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: identity\n\n",
        "obs-fold": "GET / HTTP/1.1\nHost: a\nX-Folded: one\n two\n\n",
        "space-before-colon": "GET / HTTP/1.1\nContent-Length : 5\n\n",
        "connect": "CONNECT www.example.com:443 HTTP/1.1\nHost: www.example.com:443\n\n",
        "websocket": "GET /chat HTTP/1.1\nHost: server.example.com\nUpgrade: websocket\nConnection: Upgrade\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\n",
        "range": "GET /big.iso HTTP/1.1\nHost: a\nRange: bytes=0-99\nIf-Range: \"abc\"\nAccept-Encoding: gzip, deflate, br\n\n",
        "empty-value": "GET / HTTP/1.1\nHost:\nX-Empty: \n\n",
        "res-200": "HTTP/1.1 200 OK\nDate: Mon, 27 Jul 2009 12:28:53 GMT\nServer: nginx\nContent-Length: 51\n"
        "Content-Type: text/plain\nETag: \"34aa387-d-1568eb00\"\nLast-Modified: Wed, 22 Jul 2009 19:15:56 GMT\n\n",
        "res-chunked-gzip": "HTTP/1.1 200 OK\nContent-Type: text/html\nContent-Encoding: gzip\nTransfer-Encoding: chunked\nVary: Accept-Encoding\n\n",
        "res-10-close": "HTTP/1.0 200 OK\nContent-Type: application/x-msdownload\n\n",
        "res-204": "HTTP/1.1 204 No Content\nContent-Length: 10\n\n",
        "res-304": "HTTP/1.1 304 Not Modified\nETag: \"x\"\n\n",
        "res-101": "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\n",
        "res-100": "HTTP/1.1 100 Continue\n\n",
        "res-no-reason": "HTTP/1.1 200\nContent-Length: 1\n\n",
        "res-empty-reason": "HTTP/1.1 404 \nContent-Length: 0\n\n",
        "res-obs-text-reason": "HTTP/1.1 200 \xe4\xf6\xfc\nContent-Length: 2\n\n",
        "res-te-cl": "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Length: 100\n\n",
        "res-connection-close": "HTTP/1.1 200 OK\nConnection: close, x-foo\nContent-Length: 3\n\n",
    }
    for name, h in heads.items():
        write(t, name, crlf(h))
    # Heads with something after the blank line, bare LF, bare CR, NUL.
    write(t, "with-body", crlf("POST / HTTP/1.1\nHost: a\nContent-Length: 4\n\n") + b"BODY")
    write(t, "bare-lf", b"GET / HTTP/1.1\nHost: a\r\n\r\n")
    write(t, "bare-cr", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n")
    write(t, "nul", b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n")
    write(t, "lf-only", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n")
    many = "".join(f"X-H{i}: v{i}\n" for i in range(101))
    write(t, "101-headers", crlf("GET / HTTP/1.1\n" + many + "\n"))
    write(t, "long-value", crlf("GET / HTTP/1.1\nHost: a\nCookie: " + "x" * 4000 + "\n\n"))


# ------------------------------------------------------------------ chunked
def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


def chunked():
    t = "chunked"
    rfc = chunk(b"This is data that was returned by an origin server.") + b"0\r\n\r\n"
    bodies = {
        "rfc": rfc,
        "two-chunks": chunk(b"hello ") + chunk(b"world") + b"0\r\n\r\n",
        "extensions": b"1e;name=value\r\nI am posting this information.\r\n0; ieof\r\n\r\n",
        "quoted-ext": b'5;a="b;c"\r\nhello\r\n0\r\n\r\n',
        "space-ext": b"5 ;x\r\nhello\r\n0\r\n\r\n",
        "trailers": chunk(b"abc") + b"0\r\nX-Checksum: 1234\r\nExpires: 0\r\n\r\n",
        "after-body": rfc + b"GET /next HTTP/1.1\r\n\r\n",
        "upper-hex": b"A\r\n0123456789\r\n0\r\n\r\n",
        "leading-zeros": b"000000000000000A\r\n0123456789\r\n0\r\n\r\n",
        "17-digits": b"0000000000000000A\r\n0123456789\r\n0\r\n\r\n",
        "max-size": b"ffffffffffffffff\r\nabc",
        "0x": b"0x5\r\nhello\r\n0\r\n\r\n",
        "negative": b"-1\r\nhello\r\n0\r\n\r\n",
        "plus": b"+5\r\nhello\r\n0\r\n\r\n",
        "data-too-long": b"2\r\nabc\r\n0\r\n\r\n",
        "bare-lf": b"2\nab\n0\n\n",
        "bare-cr": b"1\r\na\r\r\n0\r\n\r\n",
        "folded-trailer": b"2\r\nab\r\n0\r\n folded\r\n\r\n",
        "trailer-no-colon": b"2\r\nab\r\n0\r\nnocolon\r\n\r\n",
        "long-ext": b"1;" + b"a" * 9000 + b"\r\nx\r\n0\r\n\r\n",
        "cut": chunk(b"x" * 300)[:200],
        "empty-chunk-ends": b"0\r\n\r\n",
        "many-small": b"".join(chunk(bytes([65 + i % 26])) for i in range(200)) + b"0\r\n\r\n",
        "big": chunk(bytes(range(256)) * 40) + chunk(b"tail") + b"0\r\n\r\n",
        # What Chromium accepts and the strict rules refuse (and the reverse).
        "lf-only": b"5\nhello\n0\n\n",
        "spaces-after-size": b"5      \r\nhello\r\n0\r\n\r\n",
        "any-trailer": b"0005\r\nhello\r\n00\r\nnot a header\r\nContent-Length: 9\r\n\r\n",
        "tab-after-size": b"5\t\r\nhello\r\n0\r\n\r\n",
        "2-to-the-63": b"8000000000000000\r\nhello\r\n",
        "nul-in-size": b"5\x00\r\nhello\r\n0\r\n\r\n",
        "empty-line-first": b"\r\n5\r\nhello\r\n0\r\n\r\n",
        "browser-long-ext": b"1;" + b"a" * 16400 + b"\r\nx\r\n0\r\n\r\n",
    }
    # ctl: splits (low 2 bits), style (bits 2-3), browser rules (bit 4);
    # bytes 1..=3: split points.
    variants = [(0x00, b"\x00\x00\x00"), (0x07, b"\x10\x80\xf0"), (0x0a, b"\x40\xc0\x00"),
                (0x10, b"\x00\x00\x00"), (0x1b, b"\x20\x60\xe0")]
    for name, body in bodies.items():
        for ctl, pts in variants if len(body) < 16384 else variants[:1] + variants[3:4]:
            write(t, f"{name}-{ctl:02x}", bytes([ctl]) + pts + body)


# ---------------------------------------------------------------- head_scan
def head_scan():
    t = "head_scan"
    heads = [
        ("get", crlf("GET / HTTP/1.1\nHost: a\n\n") + b"BODY"),
        ("response", crlf("HTTP/1.1 200 OK\nContent-Length: 5\n\n") + b"hello"),
        ("icap", crlf("ICAP/1.0 204 No Content\nISTag: \"x\"\n\n")),
        ("bare-lf", b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
        ("bare-lf-after-end", b"GET / HTTP/1.1\r\n\r\n\nX"),
        ("cr-cr", b"GET / HTTP/1.1\r\r\n\r\n"),
        ("lf-first", b"\nGET"),
        ("crlf-only", b"\r\n\r\n"),
        ("incomplete", crlf("GET / HTTP/1.1\nHost: a\n")),
        ("long", crlf("GET / HTTP/1.1\nX-Long: " + "x" * 3000 + "\n\n")),
    ]
    for name, h in heads:
        for seed in (0, 5, 15):
            write(t, f"{name}-{seed}", bytes([seed]) + h)


# ----------------------------------------------------------- content_decode
CODINGS = [("gzip",), ("deflate",), ("br",), ("gzip", "gzip"), ("gzip", "br")]
PIECES = [1, 7, 64, 512, 4096, 16384, 65536, None]


def ctl(codings, piece):
    c = CODINGS.index(codings)
    p = PIECES.index(piece)
    for v in range(p * 32, p * 32 + 32):
        if v % 5 == c:
            return v
    raise AssertionError


def gz(data, level=6):
    return gzip.compress(data, compresslevel=level, mtime=0)


def zlib_(data, level=6):
    return zlib.compress(data, level)


def raw_deflate(data, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def br(data, quality=5):
    return brotli.compress(data, quality=quality)


def gz_with_fields(data):
    """A gzip member with FEXTRA, FNAME, FCOMMENT and FHCRC set."""
    deflated = raw_deflate(data)
    flags = 0x04 | 0x08 | 0x10 | 0x02
    head = b"\x1f\x8b\x08" + bytes([flags]) + b"\x00\x00\x00\x00\x00\x03"
    extra = b"AB\x04\x00wxyz"
    head += struct.pack("<H", len(extra)) + extra + b"file.txt\x00a comment\x00"
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return head + deflated + trailer


def content_decode():
    t = "content_decode"
    text = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(300))
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    seeds = {
        "gzip-text": (("gzip",), 512, gz(text)),
        "gzip-eicar": (("gzip",), None, gz(eicar)),
        "gzip-fields": (("gzip",), 7, gz_with_fields(text[:2000])),
        "gzip-two-members": (("gzip",), 64, gz(b"first ") + gz(b"second")),
        "gzip-trailing-junk": (("gzip",), None, gz(b"member") + b"JUNK"),
        "gzip-bad-crc": (("gzip",), None, gz(text[:500])[:-8] + b"\xff" * 8),
        "gzip-cut-trailer": (("gzip",), 1, gz(text[:500])[:-5]),
        "gzip-cut-data": (("gzip",), None, gz(text)[:300]),
        "gzip-empty": (("gzip",), None, gz(b"")),
        "gzip-stored": (("gzip",), 4096, gz(bytes(range(256)) * 8, level=0)),
        "not-gzip": (("gzip",), None, b"definitely not gzip at all"),
        "zlib": (("deflate",), 64, zlib_(text)),
        "raw-deflate": (("deflate",), 7, raw_deflate(text)),
        "zlib-trailing": (("deflate",), None, zlib_(eicar) + b"more"),
        "deflate-cut": (("deflate",), None, zlib_(text)[:100]),
        "br-text": (("br",), 512, br(text)),
        "br-eicar": (("br",), None, br(eicar, quality=11)),
        "br-cut": (("br",), None, br(text)[:50]),
        "br-large-window": (("br",), None, b"\x11\x00\x00\x00\x00\x00\x80\x00\x00\x00\x00\x00\x00\x00"),
        "gzip-gzip": (("gzip", "gzip"), 64, gz(gz(text))),
        "gzip-br": (("gzip", "br"), 64, br(gz(text))),
        "gzip-br-eicar": (("gzip", "br"), None, br(gz(eicar))),
    }
    # Decompression bombs: a few KiB (or bytes) that decode to tens or
    # hundreds of MiB; the decoder must stop at the ratio or size limit.
    zeros64 = bytes(64 << 20)
    gz64 = gz(zeros64, level=9)  # ~64 KiB, ratio ~1030:1: just over the limit
    seeds.update({
        "bomb-gzip-64m": (("gzip",), 65536, gz64),
        "bomb-gzip-gzip-64m": (("gzip", "gzip"), None, gz(gz64, level=9)),
        "bomb-zlib-64m": (("deflate",), 16384, zlib_(zeros64, level=9)),
        "bomb-br-64m": (("br",), None, br(zeros64, quality=11)),
        "bomb-gzip-br-64m": (("gzip", "br"), None, br(gz64, quality=11)),
        "bomb-gzip-members": (("gzip",), 4096, gz(bytes(4 << 20), level=9) * 8),
    })
    zeros256 = bytes(256 << 20)
    seeds["bomb-gzip-gzip-256m"] = (("gzip", "gzip"), 512, gz(gz(zeros256, level=9), level=9))
    seeds["bomb-br-256m"] = (("br",), 1, br(zeros256, quality=11))
    for name, (codings, piece, body) in seeds.items():
        write(t, name, bytes([ctl(codings, piece)]) + body)


# ------------------------------------------------------------ icap_response
def icap_response():
    t = "icap_response"
    http_200 = "HTTP/1.1 200 OK\nDate: Mon, 10 Jan 2000 09:55:21 GMT\nServer: Apache/1.3.6 (Unix)\n" \
        "ETag: \"63840-1ab7-378d415b\"\nContent-Type: text/html\nContent-Length: 92\n\n"
    http_403 = "HTTP/1.1 403 Forbidden\nServer: C-ICAP\nConnection: close\nContent-Type: text/html\n" \
        "Content-Length: 80\n\n"
    answers = {
        # RFC 3507 §4.8.3, the RESPMOD answer with a modified response.
        "rfc3507-respmod-200": "ICAP/1.0 200 OK\nDate: Mon, 10 Jan 2000  09:55:21 GMT\n"
        "Server: ICAP-Server-Software/1.0\nConnection: close\nISTag: \"W3E4R7U9-L2E4-2\"\n"
        f"Encapsulated: res-hdr=0, res-body={len(crlf(http_200))}\n\n" + http_200
        + "33\nThis is data that was returned by an origin server.\n0\n\n",
        # RFC 3507 §4.8.3, REQMOD answer with a modified request.
        "rfc3507-reqmod-200": "ICAP/1.0 200 OK\nDate: Mon, 10 Jan 2000  09:55:21 GMT\n"
        "Server: ICAP-Server-Software/1.0\nConnection: close\nISTag: \"W3E4R7U9-L2E4-2\"\n"
        "Encapsulated: req-hdr=0, null-body=231\n\n"
        "GET /modified-path HTTP/1.1\nHost: www.origin-server.com\nVia: 1.0 icap-server.net (ICAP Example ReqMod Service 1.1)\n"
        "Accept: text/html, text/plain, image/gif\nAccept-Encoding: gzip, compress\n"
        "If-None-Match: \"xyzzy\", \"r2d2xxxx\"\n\n",
        # RFC 3507 §4.10.2, OPTIONS.
        "rfc3507-options": "ICAP/1.0 200 OK\nDate: Mon, 10 Jan 2000  09:55:21 GMT\nMethods: RESPMOD\n"
        "Service: FOO Tech Server 1.0\nISTag: \"W3E4R7U9-L2E4-2\"\nEncapsulated: null-body=0\n"
        "Max-Connections: 1000\nOptions-TTL: 7200\nAllow: 204\nPreview: 2048\n"
        "Transfer-Complete: asp, bat, exe, com\nTransfer-Ignore: html\nTransfer-Preview: *\n\n",
        "204": "ICAP/1.0 204 No Content\nISTag: \"CI0001-XXXXXXXXX\"\nServer: C-ICAP/0.5.10\nConnection: keep-alive\n\n",
        "100": "ICAP/1.0 100 Continue\n\n",
        # c-icap virus_scan with clamd: an infected answer with its 403 page.
        "c-icap-infected": "ICAP/1.0 200 OK\nServer: C-ICAP/0.5.10\nConnection: keep-alive\n"
        "ISTag: \"CI0001-XXXXXXXXX\"\nX-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Test;\n"
        f"Encapsulated: res-hdr=0, res-body={len(crlf(http_403))}\n\n" + http_403
        + "50\n<html><body><h1>VIRUS FOUND</h1>You tried to get an infected file.</body></html>\n0\n\n",
        "symantec": "ICAP/1.0 200 OK\nISTag: \"x\"\n"
        "X-Infection-Found: Type=0; Resolution=2; Threat=EICAR Test String;\nEncapsulated: res-hdr=0, null-body=19\n\n"
        "HTTP/1.1 403 Forbidden\n\n",
        "kaspersky": "ICAP/1.0 200 OK\nX-Virus-ID: EICAR-Test-File, Trojan.Gen\nEncapsulated: null-body=0\n\n",
        "virus-name": "ICAP/1.0 200 OK\nX-Virus-Name: Eicar\n\n",
        "mcafee-violations": "ICAP/1.0 200 OK\nISTag: \"W3E4R7U9-L2E4-2\"\nX-Violations-Found: 2\n\ta.com\n"
        "\tEICAR test file\n\t111\n\t0\n\tb.exe\n\tW32/Bad\n\t222\n\t0\nEncapsulated: res-hdr=0, res-body=45\n\n",
        "violations-zero": "ICAP/1.0 200 OK\nX-Violations-Found: 0\n\n",
        "sophos-block": "ICAP/1.0 200 OK\nX-Block-Reason: Malware detected\nX-Response-Info: Blocked\n\n",
        "response-info-passed": "ICAP/1.0 200 OK\nX-Response-Info: Passed\n\n",
        "404-service": "ICAP/1.0 404 ICAP Service Not Found\nServer: C-ICAP/0.5.10\nConnection: close\n\n",
        "500": "ICAP/1.0 500 Server Error\nEncapsulated: null-body=0\n\n",
        "bad-encapsulated": "ICAP/1.0 200 OK\nEncapsulated: res-hdr=x, res-body\n\n",
        "folded-first": "ICAP/1.0 200 OK\n\tcontinued\n\n",
        "http-status": "HTTP/1.1 200 OK\n\n",
    }
    for name, a in answers.items():
        write(t, name, crlf(a))
    write(t, "not-utf8", b"ICAP/1.0 200 OK\r\nX-Virus-ID: \xff\xfe\r\n\r\n")


# -------------------------------------------------------------- ftp_command
def ftp_command():
    t = "ftp_command"
    lines = {
        "227": "227 Entering Passive Mode (198,19,0,2,117,48).",
        "227-nat": "227 Entering Passive Mode (10,0,0,5,195,80)",
        "227-spaces": "227 Entering Passive Mode ( 198, 19, 0, 2, 117, 48 ).",
        "227-bad": "227 Entering Passive Mode (1,2,3,4,5,256).",
        "227-no-parens": "227 =198,19,0,2,117,48",
        "229": "229 Entering Extended Passive Mode (|||6446|)",
        "229-other-delim": "229 Entering Extended Passive Mode (!!!6446!)",
        "229-big": "229 Entering Extended Passive Mode (|||65536|)",
        "port": "PORT 198,19,0,1,4,1\r\n",
        "port-lower": "port 10,0,0,1,255,255",
        "eprt-v4": "EPRT |1|132.235.1.2|6275|\r\n",
        "eprt-v6": "EPRT |2|fd00:18::2|5282|",
        "eprt-mapped": "EPRT |2|::ffff:198.19.0.1|5282|",
        "eprt-mismatch": "EPRT |1|::1|5282|",
        "stou-150": "150 FILE: stou-1.bin",
        "stou-125": "125 File: a b",
        "stou-none": "150 Ok to send data.",
        "retr": "retr a file.txt\r\n",
        "stor": "STOR upload.exe\r\n",
        "appe": "APPE log.txt",
        "rest": "REST 1000",
        "auth": "AUTH TLS",
        "feat": "211-Features:\r\n MDTM\r\n EPSV\r\n211 End\r\n",
        "multi": "220-Welcome\n220-to the server\n220 ready",
        "226": "226 Transfer complete.",
        "code-only": "226",
        "code-cr": "226\r",
        "505": "505 virus found in file: Eicar-Test",
        "utf8": "RETR f\u00fcr-\u00e9t\u00e9.txt",
        "abor-iac": "\xff\xf4\xff\xf2ABOR\r\n",
    }
    for name, line in lines.items():
        write(t, name, line.encode("utf-8") if name != "abor-iac" else line.encode("latin-1"))


def http_response():
    """The http-oddities corpus (tests/data/http-oddities), expanded with
    the clean payload, each behind a step byte (how the target feeds it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests", "compat"))
    import corpus
    cases = os.path.join(here, "..", "tests", "data", "http-oddities")
    for name in sorted(os.listdir(cases)):
        if not name.endswith(".http"):
            continue
        with open(os.path.join(cases, name), "rb") as f:
            raw = corpus.expand(f.read(), corpus.PAYLOADS["clean"])
        if len(raw) <= 16 * 1024:
            write("http_response", name[:-5], bytes([7]) + raw)


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    for f in (http_head, http_response, chunked, head_scan, content_decode, icap_response, ftp_command):
        f()
    total = 0
    for target in sorted(os.listdir(ROOT)):
        files = os.listdir(os.path.join(ROOT, target))
        size = sum(os.path.getsize(os.path.join(ROOT, target, n)) for n in files)
        total += size
        print(f"{target}: {len(files)} files, {size} bytes", file=sys.stderr)
    print(f"total: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
