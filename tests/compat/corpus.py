"""Template expansion for the http-oddities corpus (tests/data/http-oddities).

Shared by server.py (which sends the expanded responses) and check.py (which
expands the `chromium` expectations the same way).  Standard library only,
plus Debian's python3-brotli for `{BR}` (imported lazily); zstd frames are
built by a tiny built-in encoder so no zstd package is needed.

Placeholders (the README in the corpus directory is the reference):

  {BODY} {LEN} {HEX}            payload, its length in decimal / lower-case hex
  {<NAME>}                      a payload-derived byte string (see DERIVED)
  {<NAME>LEN} {<NAME>HEX}       its length in decimal / lower-case hex
  {<NAME>LEN+N} {<NAME>LEN-N}   that length plus/minus a decimal constant N
  {<NAME>HEX+N} {<NAME>HEX-N}   (also for the payload: {LEN+N}, {HEX+N}, ...)
  {xHH}                         one raw byte with hex value HH
  {PAD:N}                       N bytes of 'a' (N decimal)
  {FLUSH}                       server only: send what precedes, pause, go on
                                (a separate TCP write); expands to nothing
                                elsewhere
"""

import gzip
import re
import struct
import zlib

# The two payloads.  EICAR is assembled from pieces at run time so that the
# complete test string never exists in any file.
_EICAR_PIECES = (
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
    "EICAR-STANDARD-",
    "ANTIVIRUS-TEST-FILE!$H+H*",
)
PAYLOADS = {
    "clean": b"gateway-compat-clean-body-0123456789",
    "eicar": "".join(_EICAR_PIECES).encode("ascii"),
}


# ---------------------------------------------------------------- compressors
def _gzip(data: bytes) -> bytes:
    # mtime=0 keeps the output deterministic for a given zlib build.
    return gzip.compress(data, compresslevel=9, mtime=0)


def _zlib(data: bytes) -> bytes:
    return zlib.compress(data, 9)


def _rawdeflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _brotli(data: bytes) -> bytes:
    import brotli  # Debian: python3-brotli

    return brotli.compress(data)


def _gzip_member(data: bytes, flg: int = 0, extra: bytes = b"", fname: bytes = b"",
                 fcomment: bytes = b"", fhcrc: str = "", cm: int = 8,
                 magic: bytes = b"\x1f\x8b") -> bytes:
    """A hand-built gzip member (RFC 1952) so the header fields are explicit."""
    hdr = magic + bytes([cm, flg]) + b"\x00\x00\x00\x00" + b"\x02\xff"  # MTIME=0, XFL=2, OS=255
    if flg & 0x04:
        hdr += struct.pack("<H", len(extra)) + extra
    if flg & 0x08:
        hdr += fname + b"\x00"
    if flg & 0x10:
        hdr += fcomment + b"\x00"
    if flg & 0x02:
        crc16 = zlib.crc32(hdr) & 0xFFFF
        if fhcrc == "bad":
            crc16 ^= 0xFFFF
        hdr += struct.pack("<H", crc16)
    tail = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return hdr + _rawdeflate(data) + tail


def _inflate_prefix(stream: bytes, wbits: int) -> bytes:
    """What zlib can decode from a (possibly truncated) stream, no error on EOF."""
    d = zlib.decompressobj(wbits)
    return d.decompress(stream)


# zstd (RFC 8878) frames made of Raw blocks: valid zstd that every decoder
# accepts, built without a zstd library.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_blocks(data: bytes) -> bytes:
    out = b""
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)] or [b""]
    for i, ch in enumerate(chunks):
        last = 1 if i == len(chunks) - 1 else 0
        out += (last | (0 << 1) | (len(ch) << 3)).to_bytes(3, "little")  # Block_Type 0 = Raw
        out += ch
    return out


def _zstd(data: bytes) -> bytes:
    """Single-segment frame with Frame_Content_Size."""
    n = len(data)
    if n < 256:
        hdr = bytes([0x20]) + bytes([n])  # FCS_flag=0, Single_Segment=1 -> 1-byte FCS
    elif n < 65536 + 256:
        hdr = bytes([0x60]) + struct.pack("<H", n - 256)
    else:
        hdr = bytes([0xA0]) + struct.pack("<I", n)
    return _ZSTD_MAGIC + hdr + _zstd_blocks(data)


def _zstd_window(data: bytes, window_byte: int) -> bytes:
    """Frame without Frame_Content_Size (as streaming compressors emit), with a Window_Descriptor."""
    return _ZSTD_MAGIC + bytes([0x00, window_byte]) + _zstd_blocks(data)


def _zstd_nofcs(data: bytes) -> bytes:
    return _zstd_window(data, 0x00)  # 1 KiB window


def _zstd_window_9m(data: bytes) -> bytes:
    return _zstd_window(data, (13 << 3) | 1)  # 2^(10+13) + 1/8 of it = 9 MiB


def _zstd_skippable_first(data: bytes) -> bytes:
    skip_payload = b"skippable-frame-payload"
    return (b"\x50\x2a\x4d\x18" + struct.pack("<I", len(skip_payload)) + skip_payload
            + _zstd(data))


def _half(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _flip_tail(b: bytes, start: int, end: int) -> bytes:
    """XOR 0xFF over b[start:end] (negative offsets from the end)."""
    ba = bytearray(b)
    for i in range(len(ba) + start, len(ba) + end if end else len(ba)):
        ba[i] ^= 0xFF
    return bytes(ba)


SECOND_MEMBER_TEXT = b"second-gzip-member"

# name -> function(payload) -> bytes.  Each gets {NAME}, {NAMELEN}, {NAMEHEX}.
DERIVED = {
    "BODY": lambda p: p,
    "GZ": _gzip,
    "DEFLATE": _zlib,
    "RAWDEFLATE": _rawdeflate,
    "BR": _brotli,
    "GZGZ": lambda p: _gzip(_gzip(p)),
    "BRGZ": lambda p: _brotli(_gzip(p)),
    "ADLER32": lambda p: struct.pack(">I", zlib.adler32(p) & 0xFFFFFFFF),
    "DEFLATE_BADADLER": lambda p: _zlib(p)[:-4] + b"\xff\xff\xff\xff",
    "GZ_BADCRC": lambda p: _flip_tail(_gzip(p), -8, -4),
    "GZ_BADISIZE": lambda p: _flip_tail(_gzip(p), -4, 0),
    "GZ_NOTRAILER": lambda p: _gzip(p)[:-8],
    "GZ_HALFTRAILER": lambda p: _gzip(p)[:-4],
    "GZ_FEXTRA": lambda p: _gzip_member(p, flg=0x04, extra=b"AB\x02\x00xy"),
    "GZ_FNAME": lambda p: _gzip_member(p, flg=0x08, fname=b"a.txt"),
    "GZ_FCOMMENT": lambda p: _gzip_member(p, flg=0x10, fcomment=b"hi"),
    "GZ_FHCRC": lambda p: _gzip_member(p, flg=0x02),
    "GZ_FHCRC_BAD": lambda p: _gzip_member(p, flg=0x02, fhcrc="bad"),
    "GZ_RESERVEDFLAG": lambda p: _gzip(p)[:3] + b"\x20" + _gzip(p)[4:],
    "GZ_BADCM": lambda p: _gzip(p)[:2] + b"\x07" + _gzip(p)[3:],
    "GZ_BADMAGIC": lambda p: _gzip(p)[:1] + b"\x00" + _gzip(p)[2:],
    "GZ_TWOMEMBERS": lambda p: _gzip(p) + _gzip(SECOND_MEMBER_TEXT),
    "GZ_HALF": lambda p: _half(_gzip(p)),
    "GZ_HALF_INFLATED": lambda p: _inflate_prefix(_half(_gzip(p)), 31),
    "GZ_HEADER": lambda p: _gzip(p)[:10],
    "GZ_MAGIC4": lambda p: _gzip(p)[:4],
    "BR_HALF": lambda p: _half(_brotli(p)),
    "BODY16": lambda p: p * 16,
    "GZ_BODY16": lambda p: _gzip(p * 16),
    "ZSTD": _zstd,
    "ZSTD_NOFCS": _zstd_nofcs,
    "ZSTD_HALF": lambda p: _half(_zstd(p)),
    "ZSTD_WINDOW9M": _zstd_window_9m,
    "ZSTD_TWOFRAMES": lambda p: _zstd(p) + _zstd(p),
    "ZSTD_SKIPPABLEFIRST": _zstd_skippable_first,
}

_PH = re.compile(rb"\{([A-Za-z0-9_:+\-]+)\}")
FLUSH = b"\x00\x01FLUSH-MARKER\x01\x00"  # internal marker; split on it in the server


class TemplateError(ValueError):
    pass


def _resolve(name: str, payload: bytes, cache: dict) -> bytes:
    def derived(n):
        if n not in cache:
            cache[n] = DERIVED[n](payload)
        return cache[n]

    if name == "FLUSH":
        return FLUSH
    m = re.fullmatch(r"x([0-9A-Fa-f]{2})", name)
    if m:
        return bytes([int(m.group(1), 16)])
    m = re.fullmatch(r"PAD:(\d+)", name)
    if m:
        return b"a" * int(m.group(1))
    if name in DERIVED:
        return derived(name)
    if name.startswith(("LEN", "HEX")):
        name = "BODY" + name
    m = re.fullmatch(r"([A-Z0-9_]+?)(LEN|HEX)(?:([+-])(\d+))?", name)
    if m:
        base = m.group(1) or "BODY"
        if base in DERIVED:
            n = len(derived(base))
            if m.group(3):
                n = n + int(m.group(4)) if m.group(3) == "+" else n - int(m.group(4))
            return (str(n) if m.group(2) == "LEN" else format(n, "x")).encode()
    raise TemplateError(f"unknown placeholder {{{name}}}")


def expand(template: bytes, payload: bytes, keep_flush: bool = False) -> bytes:
    """Expand a template (bytes).  {FLUSH} becomes FLUSH markers if keep_flush."""
    cache: dict = {}

    def sub(m):
        return _resolve(m.group(1).decode(), payload, cache)

    out = _PH.sub(sub, template)
    if not keep_flush:
        out = out.replace(FLUSH, b"")
    return out


def expand_text(template: str, payload: bytes) -> bytes:
    """Expand a TOML string template: characters U+0000..U+00FF map to bytes."""
    return expand(template.encode("latin-1"), payload)


def split_flush(expanded: bytes):
    return expanded.split(FLUSH)
