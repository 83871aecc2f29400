#!/usr/bin/env python3
"""Summarize a `perf record --call-graph dwarf` profile of a proxy.

    python3 benches/load/profile.py perf.data [top]

Prints, as percentages of all samples of the process: samples per thread;
self time per category (kernel, allocator, memcpy, Tollgate's crates, Pingora,
tokio, serde_json, logging, metrics, SQLite/sqlx, ...); and the Tollgate
functions with the most inclusive time (a function counted once per sample).
`run.py` writes such profiles with PERF_RECORD=<proxy> KEEP_RUN_DIR=1.
Python 3.11 standard library only.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys

CATEGORIES = [
    ("kernel", lambda s, d: d.startswith("[kernel") or s.endswith("[k]")),
    ("allocator (malloc/free)", lambda s, d: re.search(r"malloc|_int_free|cfree|free$|unlink_chunk|realloc|consolidate|tcache", s) is not None and "libc" in d),
    ("memcpy/memmove/memset", lambda s, d: re.search(r"mem(move|cpy|set|cmp)", s) is not None),
    ("SQLite + sqlx (ledger writer)", lambda s, d: s.startswith("sqlite3") or "sqlx" in s or s.startswith("wal") or "Vdbe" in s or "Btree" in s),
    ("logging (log, env_logger, anstream)", lambda s, d: re.search(r"env_logger|anstream|anstyle|^log::|humantime", s) is not None),
    ("serde_json", lambda s, d: "serde_json" in s or "serde::" in s),
    ("prometheus", lambda s, d: "prometheus" in s),
    ("Tollgate crates", lambda s, d: "tollgate" in s),
    ("Pingora", lambda s, d: "pingora" in s),
    ("tokio", lambda s, d: "tokio" in s),
    ("http / httparse / bytes", lambda s, d: re.search(r"^http::|httparse|^bytes::|<bytes::|<http::", s) is not None),
    ("vdso (clock)", lambda s, d: "vdso" in d or "clock_gettime" in s),
    ("libc, other", lambda s, d: "libc" in d),
]


def category(sym: str, dso: str) -> str:
    for name, test in CATEGORIES:
        if test(sym, dso):
            return name
    return "other"


def samples(path: str):
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    comm, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
            continue
        if not line.startswith((" ", "\t")):
            comm = line.strip()
            continue
        m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            frames.append((m.group(1), m.group(2)))
    if comm is not None:
        yield comm, frames


def short(sym: str) -> str:
    sym = re.sub(r"::\{\{closure\}\}", "", sym)
    sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    return sym


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    threads = collections.Counter()
    cats = collections.Counter()
    incl = collections.Counter()
    total = 0
    for comm, frames in samples(path):
        if not frames:
            continue
        total += 1
        threads[comm] += 1
        sym, dso = frames[0]
        cats[category(sym, dso)] += 1
        seen = set()
        for s, _ in frames:
            s = short(s)
            if ("tollgate" in s or "sqlx" in s) and s not in seen:
                seen.add(s)
                incl[s] += 1
    pct = lambda n: f"{100 * n / total:5.1f}%"
    print(f"{total} samples\n\nthreads:")
    for k, v in threads.most_common():
        print(f"  {pct(v)}  {k}")
    print("\nself time by category:")
    for k, v in cats.most_common():
        print(f"  {pct(v)}  {k}")
    print(f"\nTollgate (and sqlx) functions, inclusive, top {top}:")
    for k, v in incl.most_common(top):
        print(f"  {pct(v)}  {k[:150]}")


if __name__ == "__main__":
    main()
