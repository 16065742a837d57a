#!/usr/bin/python3
"""Compare oracle.mjs output with tests/data/http-oddities/expected.toml.

    /usr/bin/python3 check.py RESULTS.jsonl [--dir DIR] [--payload clean|eicar]
    node oracle.mjs ... | /usr/bin/python3 check.py -

For every case the oracle ran, the observed outcome is "reject" when the load
failed (any net::ERR_…) and otherwise the body bytes; the case passes when
that equals the `chromium` field (a template, expanded exactly as server.py
expands the responses, with the same payload).  Prints each mismatch and a
closing line "N passed, N failed".  Exit status 1 if anything failed.

    check.py RESULTS.jsonl --against BASELINE.jsonl

compares two oracle runs (e.g. through the gateway vs direct) case by case,
including the exact net::ERR_… code and the HTTP status.
"""

import argparse
import base64
import json
import os
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402


def load_results(path):
    f = sys.stdin if path == "-" else open(path)
    out = {}
    for line in f:
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            out[r["id"]] = r
    return out


def outcome(r):
    if r.get("error"):
        return "reject"
    return base64.b64decode(r.get("body_b64", ""))


def show(v, limit=120):
    if v == "reject":
        return "reject"
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + f"... ({len(v)} bytes)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="oracle JSON lines, or - for stdin")
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../data/http-oddities"))
    ap.add_argument("--payload", default="clean", choices=sorted(corpus.PAYLOADS))
    ap.add_argument("--against", help="compare with another oracle run instead of expected.toml")
    ap.add_argument("--all", action="store_true", help="fail on cases missing from the results")
    args = ap.parse_args()

    with open(os.path.join(args.dir, "expected.toml"), "rb") as f:
        expected = tomllib.load(f)
    results = load_results(args.results)
    payload = corpus.PAYLOADS[args.payload]

    passed = failed = 0
    by_family = {}
    if args.against:
        base = load_results(args.against)
        for cid in expected:
            a, b = results.get(cid), base.get(cid)
            if a is None or b is None:
                if args.all:
                    print(f"MISSING {cid}")
                    failed += 1
                continue
            ka = (a.get("error"), a.get("status"), a.get("body_b64") if not a.get("error") else None)
            kb = (b.get("error"), b.get("status"), b.get("body_b64") if not b.get("error") else None)
            if ka == kb:
                passed += 1
            else:
                failed += 1
                print(f"DIFF {cid}: {describe(a)}  vs baseline  {describe(b)}")
        print(f"{passed} passed, {failed} failed")
        return 1 if failed else 0

    accepted = rejected = 0
    for cid, meta in expected.items():
        r = results.get(cid)
        if r is None:
            if args.all:
                print(f"MISSING {cid}")
                failed += 1
            continue
        exp_t = meta["chromium"]
        exp = "reject" if exp_t == "reject" else corpus.expand_text(exp_t, payload)
        got = outcome(r)
        fam = by_family.setdefault(meta["family"], [0, 0])
        if got == exp:
            passed += 1
            fam[0] += 1
        else:
            failed += 1
            fam[1] += 1
            print(f"MISMATCH {cid} [{meta['family']}]")
            print(f"    expected: {show(exp)}   (template {exp_t!r})")
            print(f"    observed: {show(got)}   {describe(r)}")
        if got == "reject":
            rejected += 1
        else:
            accepted += 1
    print()
    for fam, (p, f) in by_family.items():
        print(f"  {fam:18s} {p:4d} ok {f:4d} mismatched")
    print(f"observed: {accepted} accepted, {rejected} rejected (of {accepted + rejected} cases run)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def describe(r):
    bits = [f"status={r.get('status')}"]
    if r.get("error"):
        bits.append(r["error"])
    else:
        bits.append(f"{len(base64.b64decode(r.get('body_b64', '')))} body bytes")
    if r.get("download"):
        bits.append("download")
    if r.get("note"):
        bits.append(r["note"])
    return "(" + ", ".join(bits) + ")"


if __name__ == "__main__":
    sys.exit(main())
