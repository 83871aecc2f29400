#!/usr/bin/env python3
"""The side-by-side load harness (`make bench`).

Starts on loopback a fixed-body mock upstream (`load-mock`), and in turn, fresh
for every scenario: a bare Pingora passthrough proxy (`bare-pingora`, the
floor), nginx as a reverse proxy, and Tollgate (auth, limits, budgets, metrics,
access log and the SQLite usage ledger all on). Each is driven by wrk with the
same load; one Markdown table per scenario is printed, each row with its ratio
to bare Pingora. A "direct" row is wrk straight at the mock.

Measured per row: requests/s and p50/p99 latency (wrk), the server's CPU time
(utime + stime of every thread, from /proc/<pid>/stat, before and after the
load window) per completed request, how busy that made it (CPU time / wall
time), and its peak RSS (VmHWM; the server is restarted per scenario, so the
peak is this scenario's, warm-up included).

Knobs (environment):
  BENCH_SECONDS   load window per row (10)
  WARMUP_SECONDS  unmeasured load before it (2)
  CONNECTIONS     wrk connections (32)
  SCENARIOS       comma list of: json, stream, xlate-json, xlate-stream, big, slow, soak
                  (default: all)
  PROXIES         comma list of: direct, bare, nginx, tollgate (default: all)
  SLOW_STREAMS    concurrent slow streams in `slow` (1000)
  SOAK_SECONDS    length of `soak` (300); SOAK_PROXIES (tollgate)
  PIN             1 (default): servers on CPU 0, wrk and the mock on CPU 1; 0: no pinning
  STREAM_WRITES   event (default: one write per SSE event) or one (whole stream in one write)
  BIN_DIR         where the release binaries are (target/release)
  BASE_PORT       mock on BASE_PORT, bare +1, nginx +2, Tollgate +3, its admin +4 (18000)
  PERF_RECORD     name of a proxy: run `perf record -g -e cpu-clock` on it during each
                  load window (perf.data per scenario in the run directory)
  ATTACH, ATTACH_CMD  run `bash -c ATTACH_CMD` ({pid}, {out} substituted) beside the load
                  window of proxy ATTACH, stopped with SIGINT at its end (e.g. `perf stat`)
  LEDGER_BATCH_SIZE  Tollgate's ledger.batch_size (default: the product's, 512)
  ACCESS_LOG      0: Tollgate's access log off (default on, as in production; to /dev/null-like file)
  KEEP_RUN_DIR    1: keep the run directory (configs, logs) and print its path

Only the Python 3.11 standard library; wrk and nginx from Debian.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

BENCH_SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP_SECONDS = int(os.environ.get("WARMUP_SECONDS", "2"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
ALL_SCENARIOS = ["json", "stream", "xlate-json", "xlate-stream", "big", "slow", "soak"]
SCENARIOS = [s for s in os.environ.get("SCENARIOS", ",".join(ALL_SCENARIOS)).split(",") if s]
PROXIES = [p for p in os.environ.get("PROXIES", "direct,bare,nginx,tollgate").split(",") if p]
SLOW_STREAMS = int(os.environ.get("SLOW_STREAMS", "1000"))
SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "300"))
SOAK_PROXIES = [p for p in os.environ.get("SOAK_PROXIES", "tollgate").split(",") if p]
PIN = os.environ.get("PIN", "1") == "1"
STREAM_WRITES = os.environ.get("STREAM_WRITES", "event")
BIN_DIR = Path(os.environ.get("BIN_DIR", ROOT / "target" / "release"))
BASE_PORT = int(os.environ.get("BASE_PORT", "18000"))
PERF_RECORD = os.environ.get("PERF_RECORD", "")
ATTACH = os.environ.get("ATTACH", "")
ATTACH_CMD = os.environ.get("ATTACH_CMD", "")
KEEP_RUN_DIR = os.environ.get("KEEP_RUN_DIR", "0") == "1"
LEDGER = (f"ledger: {{batch_size: {os.environ['LEDGER_BATCH_SIZE']}}}\n"
          if os.environ.get("LEDGER_BATCH_SIZE") else "")
ACCESS_LOG = "false" if os.environ.get("ACCESS_LOG", "1") == "0" else "true"

PORTS = {
    "mock": BASE_PORT,
    "bare": BASE_PORT + 1,
    "nginx": BASE_PORT + 2,
    "tollgate": BASE_PORT + 3,
    "admin": BASE_PORT + 4,
}
CLIENT_KEY = "tg-bench-client-key-0001"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU = "0"
LOAD_CPU = "1"

for unknown in set(SCENARIOS) - set(ALL_SCENARIOS):
    sys.exit(f"unknown scenario {unknown!r}; known: {', '.join(ALL_SCENARIOS)}")
for unknown in set(PROXIES + SOAK_PROXIES) - {"direct", "bare", "nginx", "tollgate"}:
    sys.exit(f"unknown proxy {unknown!r}")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if PIN else argv


# --------------------------------------------------------------------------- /proc


def tree(pid: int) -> list[int]:
    """The process and its descendants (nginx: master and worker)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process tree."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------- servers


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    pid: int
    logfile: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Harness:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.mock: subprocess.Popen | None = None

    # -- the mock ----------------------------------------------------------
    def start_mock(self) -> None:
        argv = pinned(LOAD_CPU, [str(BIN_DIR / "load-mock"), "--listen",
                                 f"127.0.0.1:{PORTS['mock']}", "--stream-writes", STREAM_WRITES])
        self.mock = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "mock.log", "wb"))
        wait_port(PORTS["mock"], self.mock, "load-mock")

    # -- proxies -----------------------------------------------------------
    def start(self, name: str) -> Server:
        if name == "direct":
            assert self.mock is not None
            return Server("direct", self.mock, PORTS["mock"], self.mock.pid, self.dir / "mock.log")
        logfile = self.dir / f"{name}.log"
        if name == "bare":
            argv = [str(BIN_DIR / "bare-pingora"), "--listen", f"127.0.0.1:{PORTS['bare']}",
                    "--upstream", f"127.0.0.1:{PORTS['mock']}", "--threads", "1"]
        elif name == "nginx":
            conf = self.dir / "nginx.conf"
            tmpl = (HERE / "nginx.conf.in").read_text()
            conf.write_text(tmpl.replace("@DIR@", str(self.dir))
                            .replace("@LISTEN@", f"127.0.0.1:{PORTS['nginx']}")
                            .replace("@UPSTREAM@", f"127.0.0.1:{PORTS['mock']}"))
            argv = ["nginx", "-p", str(self.dir), "-e", str(self.dir / "nginx-error.log"),
                    "-c", str(conf)]
        elif name == "tollgate":
            conf = self.write_tollgate_config()
            argv = [str(BIN_DIR / "tollgate"), "serve", "--config", str(conf)]
        else:
            raise ValueError(name)
        port = PORTS[name]
        if not port_free(port):
            raise RuntimeError(f"port {port} is taken: stop what listens there or set BASE_PORT")
        proc = subprocess.Popen(pinned(SERVER_CPU, argv), stdout=subprocess.DEVNULL,
                                stderr=open(logfile, "wb"), cwd=self.dir)
        try:
            wait_port(port, proc, name)
        except RuntimeError:
            sys.stderr.write(logfile.read_text(errors="replace")[-4000:])
            raise
        return Server(name, proc, port, proc.pid, logfile)

    def write_tollgate_config(self) -> Path:
        data = self.dir / "tollgate-data"
        if data.exists():
            shutil.rmtree(data)
        data.mkdir()
        mock = f"http://127.0.0.1:{PORTS['mock']}"
        conf = self.dir / "tollgate.yaml"
        conf.write_text(f"""\
# Written by benches/load/run.py: everything on (auth, 4 limit layers, budgets,
# metrics, access log, usage ledger), limits far above what a run takes.
server:
  listen: ["127.0.0.1:{PORTS['tollgate']}"]
  admin_listen: "127.0.0.1:{PORTS['admin']}"
  threads: 1
  max_body_bytes: 33554432
  grace_period_secs: 5
  graceful_shutdown_timeout_secs: 10
  upgrade_sock: {self.dir}/tollgate-upgrade.sock
  pid_file: {self.dir}/tollgate.pid
  access_log: {ACCESS_LOG}
providers:
  mock-openai:
    kind: openai
    base_url: {mock}/v1
    api_key: sk-bench-openai
    timeouts: {{connect_ms: 1000, read_ms: 30000}}
  mock-anthropic:
    kind: anthropic
    base_url: {mock}
    api_key: sk-ant-bench
    timeouts: {{connect_ms: 1000, read_ms: 30000}}
  mock-slow:
    kind: openai
    base_url: {mock}/slow/v1
    api_key: sk-bench-openai
    timeouts: {{connect_ms: 1000, read_ms: 30000}}
models:
  bench-openai:
    targets: [{{provider: mock-openai, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
    limits: {{rpm: 1000000000, tpm: 1000000000000}}
  bench-anthropic:
    targets: [{{provider: mock-anthropic, model: claude-sonnet-4-5}}]
    pricing: {{input_per_mtok: 3, output_per_mtok: 15}}
    limits: {{rpm: 1000000000, tpm: 1000000000000}}
  bench-slow:
    targets: [{{provider: mock-slow, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
store:
  url: "sqlite://{data}/tollgate.db"
{LEDGER}teams:
  bench:
    limits: {{rpm: 1000000000, tpm: 1000000000000, concurrent: 100000}}
    budget: {{daily_usd: 1000000000, monthly_usd: 10000000000}}
keys:
  - name: bench
    key: {CLIENT_KEY}
    team: bench
    models: ["*"]
    limits: {{rpm: 1000000000, tpm: 1000000000000, tpd: 1000000000000000, concurrent: 100000}}
    budget: {{daily_usd: 1000000000, monthly_usd: 10000000000}}
limits:
  global: {{concurrent: 100000}}
""")
        return conf

    def ledger_rows(self) -> int | None:
        db = self.dir / "tollgate-data" / "tollgate.db"
        if not db.exists():
            return None
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM usage_ledger").fetchone()[0]


# --------------------------------------------------------------------------- requests

OPENAI_BODY = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 64}
ANTHROPIC_BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64,
                  "messages": [{"role": "user", "content": "Say hello."}]}


def big_content() -> str:
    words = "the quick brown fox jumps over the lazy dog while a gateway counts tokens "
    return (words * (1024 * 1024 // len(words) + 1))[: 1024 * 1024]


@dataclass
class Req:
    path: str
    body: bytes
    headers: dict[str, str]


def request_for(scenario: str, proxy: str) -> Req:
    """What each proxy is sent. Tollgate always gets OpenAI's API; the others get
    the bytes the upstream expects (for translation rows: Anthropic's), passed through."""
    stream = scenario in ("stream", "xlate-stream", "slow")
    xlate = scenario.startswith("xlate")
    headers = {"Content-Type": "application/json",
               "Authorization": f"Bearer {CLIENT_KEY}"}
    if proxy == "tollgate":
        model = {"xlate-json": "bench-anthropic", "xlate-stream": "bench-anthropic",
                 "slow": "bench-slow"}.get(scenario, "bench-openai")
        body: dict = {"model": model, **OPENAI_BODY}
        if scenario == "big":
            body["messages"] = [{"role": "user", "content": big_content()}]
        if stream:
            body["stream"] = True
        return Req("/v1/chat/completions", json.dumps(body).encode(), headers)
    if stream:
        headers["Accept"] = "text/event-stream"
    if xlate:
        body = dict(ANTHROPIC_BODY, stream=True) if stream else dict(ANTHROPIC_BODY)
        headers["x-api-key"] = "sk-ant-bench"
        headers["anthropic-version"] = "2023-06-01"
        return Req("/v1/messages", json.dumps(body).encode(), headers)
    body = {"model": "gpt-4o-mini", **OPENAI_BODY}
    if scenario == "big":
        body["messages"] = [{"role": "user", "content": big_content()}]
    if stream:
        body["stream"] = True
    path = "/slow/v1/chat/completions" if scenario == "slow" else "/v1/chat/completions"
    return Req(path, json.dumps(body).encode(), headers)


WRK_LUA = """\
local f = assert(io.open("@BODY@", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
@HEADERS@
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p99":%d,"mean":%.1f}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk_script(run_dir: Path, tag: str, req: Req) -> Path:
    body = run_dir / f"body-{tag}.json"
    body.write_bytes(req.body)
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in req.headers.items())
    lua = run_dir / f"wrk-{tag}.lua"
    lua.write_text(WRK_LUA.replace("@BODY@", str(body)).replace("@HEADERS@", headers))
    return lua


def wrk(port: int, req: Req, script: Path, seconds: int, connections: int) -> dict:
    argv = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                             "-s", str(script), f"http://127.0.0.1:{port}{req.path}"])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk printed no summary:\n{out}")


def check_once(port: int, req: Req) -> None:
    """One request by hand: the row must measure successes, not errors."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"POST {req.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
        head += f"Content-Length: {len(req.body)}\r\n\r\n"
        s.sendall(head.encode() + req.body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = data.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"port {port} {req.path}: {data[:600]!r}")


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    proxy: str
    rps: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    cpu_us: float = 0.0
    busy: float = 0.0
    hwm_kib: int = 0
    errors: int = 0
    note: str = ""
    extra: dict = field(default_factory=dict)


def load_row(h: Harness, scenario: str, proxy: str) -> Row:
    req = request_for(scenario, proxy)
    server = h.start(proxy)
    try:
        check_once(server.port, req)
        script = wrk_script(h.dir, f"{scenario}-{proxy}", req)
        if WARMUP_SECONDS:
            wrk(server.port, req, script, WARMUP_SECONDS, CONNECTIONS)
        perf = None
        if PERF_RECORD == proxy:
            perf = subprocess.Popen(["perf", "record", "--call-graph", os.environ.get("PERF_CALL_GRAPH", "dwarf,16384"), "-e", "cpu-clock", "-F", "499",
                                     "-p", str(server.pid), "-o", str(h.dir / f"perf-{scenario}-{proxy}.data")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        attach = None
        if ATTACH == proxy:
            cmd = ATTACH_CMD.replace("{pid}", str(server.pid)).replace(
                "{out}", str(h.dir / f"attach-{scenario}-{proxy}.txt"))
            attach = subprocess.Popen(["bash", "-c", cmd], start_new_session=False)
            time.sleep(0.5)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        res = wrk(server.port, req, script, BENCH_SECONDS, CONNECTIONS)
        cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        if attach is not None:
            attach.send_signal(signal.SIGINT)
            attach.wait()
        n = max(res["requests"], 1)
        row = Row(
            proxy=proxy,
            rps=res["requests"] / (res["duration_us"] / 1e6),
            p50_us=res["p50"],
            p99_us=res["p99"],
            cpu_us=(cpu1 - cpu0) * 1e6 / n,
            busy=(cpu1 - cpu0) / (t1 - t0),
            hwm_kib=0 if proxy == "direct" else status_kib(server.pid, "VmHWM"),
            errors=res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"],
        )
    finally:
        if proxy != "direct":
            server.stop()
            if proxy == "tollgate":
                rows = h.ledger_rows()
                log(f"tollgate ledger rows after {scenario}: {rows}")
            if not KEEP_RUN_DIR:
                server.logfile.unlink(missing_ok=True)
    log(f"{scenario:12} {proxy:8} {row.rps:9.0f} req/s  p50 {row.p50_us:7.0f} µs  "
        f"p99 {row.p99_us:7.0f} µs  {row.cpu_us:6.1f} µs CPU/req  busy {row.busy:4.0%}  "
        f"HWM {row.hwm_kib / 1024:6.1f} MiB  errors {row.errors}")
    return row


async def open_slow(port: int, req: Req, n: int) -> list[asyncio.StreamWriter]:
    head = f"POST {req.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    head += f"Content-Length: {len(req.body)}\r\n\r\n"
    raw = head.encode() + req.body

    async def one() -> asyncio.StreamWriter:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(raw)
        await w.drain()
        got = b""
        while b"data:" not in got:
            chunk = await r.read(4096)
            if not chunk:
                raise RuntimeError(f"stream closed early: {got[:300]!r}")
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"slow stream: {got[:300]!r}")
        return w

    writers: list[asyncio.StreamWriter] = []
    for i in range(0, n, 100):  # in batches, to stay within listen backlogs
        writers += await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(min(100, n - i)))), timeout=60)
    return writers


def slow_row(h: Harness, proxy: str) -> Row:
    req = request_for("slow", proxy)
    quick = request_for("json", proxy)
    server = h.start(proxy)
    try:
        for _ in range(20):
            check_once(server.port, quick)
        time.sleep(1.0)
        base = status_kib(server.pid, "VmRSS")
        loop = asyncio.new_event_loop()
        try:
            writers = loop.run_until_complete(open_slow(server.port, req, SLOW_STREAMS))
            time.sleep(3.0)  # every stream idle between events
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(5.0)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            held = status_kib(server.pid, "VmRSS")
            for w in writers:
                w.close()
            loop.run_until_complete(asyncio.sleep(0.5))
        finally:
            loop.close()
        time.sleep(2.0)
        after = status_kib(server.pid, "VmRSS")
        row = Row(proxy=proxy, hwm_kib=status_kib(server.pid, "VmHWM"),
                  busy=(cpu1 - cpu0) / (t1 - t0))
        row.extra = {"base": base, "held": held, "after": after,
                     "per_stream": (held - base) / SLOW_STREAMS}
    finally:
        server.stop()
        if not KEEP_RUN_DIR:
            server.logfile.unlink(missing_ok=True)
    log(f"slow {proxy:8} RSS {base} → {held} KiB with {SLOW_STREAMS} streams "
        f"({row.extra['per_stream']:.1f} KiB each), {after} KiB after closing")
    return row


def soak(h: Harness, proxy: str) -> dict:
    req = request_for("json", proxy)
    server = h.start(proxy)
    samples: list[tuple[float, int]] = []
    try:
        check_once(server.port, req)
        script = wrk_script(h.dir, f"soak-{proxy}", req)
        argv = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SOAK_SECONDS}s", "--timeout",
                                 "10s", "-s", str(script), f"http://127.0.0.1:{server.port}{req.path}"])
        t0 = time.monotonic()
        cpu0 = cpu_seconds(server.pid)
        w = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        step = max(1.0, SOAK_SECONDS / 30)
        while w.poll() is None:
            time.sleep(step)
            samples.append((time.monotonic() - t0, status_kib(server.pid, "VmRSS")))
        out = w.stdout.read() if w.stdout else ""
        cpu1 = cpu_seconds(server.pid)
        res = next(json.loads(l[8:]) for l in out.splitlines() if l.startswith("WRKJSON "))
    finally:
        server.stop()
        if proxy == "tollgate":
            log(f"tollgate ledger rows after soak: {h.ledger_rows()}")
        if not KEEP_RUN_DIR:
            server.logfile.unlink(missing_ok=True)
    samples = [s for s in samples if s[0] <= SOAK_SECONDS]
    q = max(1, len(samples) // 4)
    early = sum(s[1] for s in samples[q:2 * q]) / q
    late = sum(s[1] for s in samples[-q:]) / q
    return {"proxy": proxy, "samples": samples, "requests": res["requests"],
            "rps": res["requests"] / (res["duration_us"] / 1e6),
            "cpu_us": (cpu1 - cpu0) * 1e6 / max(res["requests"], 1),
            "early": early, "late": late, "errors": res["status"] + res["read"] + res["timeout"]}


# --------------------------------------------------------------------------- output

TITLES = {
    "json": "1. Chat, non-streaming passthrough (Tollgate: auth + 4 limit layers + budgets + metrics + access log + ledger)",
    "stream": "2. Chat, streaming passthrough (50 text-delta events, one write each)",
    "xlate-json": "3. OpenAI → Anthropic, non-streaming (Tollgate translates; bare Pingora, nginx and direct pass Anthropic's bytes through unchanged)",
    "xlate-stream": "4. OpenAI → Anthropic, streaming, 50 events (Tollgate translates; the others pass Anthropic's stream through unchanged)",
    "big": "5. 1 MiB prompt, non-streaming passthrough",
}
NAMES = {"direct": "direct (wrk → mock)", "bare": "bare Pingora", "nginx": "nginx", "tollgate": "Tollgate"}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "—"


def table(scenario: str, rows: list[Row]) -> str:
    bare = next((r for r in rows if r.proxy == "bare"), None)
    direct = next((r for r in rows if r.proxy == "direct"), None)
    out = [f"### {TITLES[scenario]}", "",
           "| server | req/s | p50 | p99 | p99 added over direct | CPU µs/req | server busy | peak RSS | req/s vs bare | CPU/req vs bare | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        added = f"{(r.p99_us - direct.p99_us) / 1000:+.2f} ms" if direct and r is not direct else "—"
        out.append(
            f"| {NAMES[r.proxy]} | {r.rps:,.0f} | {r.p50_us / 1000:.2f} ms | {r.p99_us / 1000:.2f} ms | {added} "
            f"| {r.cpu_us:.1f} | {r.busy:.0%} | {'—' if r.proxy == 'direct' else f'{r.hwm_kib / 1024:.1f} MiB'} "
            f"| {ratio(r.rps, bare.rps) if bare else '—'} | {ratio(r.cpu_us, bare.cpu_us) if bare else '—'} | {r.errors} |")
    return "\n".join(out) + "\n"


def slow_table(rows: list[Row]) -> str:
    out = [f"### 6. {SLOW_STREAMS} concurrent slow streams (an event every second): memory per open stream", "",
           "| server | RSS before | RSS with streams open | per open stream | RSS after closing | CPU busy while idle | vs bare |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    bare = next((r for r in rows if r.proxy == "bare"), None)
    for r in rows:
        e = r.extra
        vs = ratio(e["per_stream"], bare.extra["per_stream"]) if bare else "—"
        out.append(f"| {NAMES[r.proxy]} | {e['base'] / 1024:.1f} MiB | {e['held'] / 1024:.1f} MiB "
                   f"| {e['per_stream']:.1f} KiB | {e['after'] / 1024:.1f} MiB | {r.busy:.1%} | {vs} |")
    return "\n".join(out) + "\n"


def soak_table(results: list[dict]) -> str:
    out = [f"### 7. Soak: scenario 1 for {SOAK_SECONDS} s, RSS sampled every {max(1, SOAK_SECONDS // 30)} s", "",
           "| server | req/s | CPU µs/req | RSS, 2nd quarter (mean) | RSS, last quarter (mean) | growth | errors |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for s in results:
        out.append(f"| {NAMES[s['proxy']]} | {s['rps']:,.0f} | {s['cpu_us']:.1f} | {s['early'] / 1024:.1f} MiB "
                   f"| {s['late'] / 1024:.1f} MiB | {(s['late'] - s['early']) / 1024:+.2f} MiB | {s['errors']} |")
    for s in results:
        out.append("")
        out.append(f"{NAMES[s['proxy']]} RSS samples (s: MiB): " +
                   ", ".join(f"{t:.0f}: {kib / 1024:.1f}" for t, kib in s["samples"]))
    return "\n".join(out) + "\n"


def main() -> None:
    for tool in ("wrk", "nginx", "taskset") if PIN else ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: `make bench` installs it (apt-get install wrk nginx)")
    for b in ("load-mock", "bare-pingora", "tollgate"):
        if not (BIN_DIR / b).exists():
            sys.exit(f"{BIN_DIR / b} is missing: cargo build --release -p tollgate -p tollgate-load")
    run_dir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    h = Harness(run_dir)
    started = time.time()
    out: list[str] = []
    try:
        h.start_mock()
        for scenario in SCENARIOS:
            if scenario in TITLES:
                rows = [load_row(h, scenario, p) for p in PROXIES]
                out.append(table(scenario, rows))
            elif scenario == "slow":
                rows = [slow_row(h, p) for p in PROXIES if p != "direct"]
                out.append(slow_table(rows))
            elif scenario == "soak":
                out.append(soak_table([soak(h, p) for p in SOAK_PROXIES]))
            print(out[-1], flush=True)
    finally:
        if h.mock is not None:
            h.mock.terminate()
            h.mock.wait()
        if KEEP_RUN_DIR:
            log(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    cpus = os.cpu_count()
    print(f"Conditions: loopback, wrk -t1 -c{CONNECTIONS}, {BENCH_SECONDS} s per row after {WARMUP_SECONDS} s warm-up, "
          f"one worker thread per server (Pingora `threads: 1`, nginx `worker_processes 1`), "
          + ("servers pinned to CPU 0, wrk and the mock to CPU 1" if PIN else "no pinning")
          + f", {cpus} CPUs, stream writes: {STREAM_WRITES}; run took {time.time() - started:.0f} s.")


if __name__ == "__main__":
    main()
