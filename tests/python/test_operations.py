"""The bare-metal deploy kit (deploy/) against the real binary: the metrics it
exports pass `promtool check metrics`, the Grafana dashboard and the alert
rules use only metrics that exist, the Prometheus files are valid, install.sh
installs into a scratch root (idempotently) a unit that `systemd-analyze
verify` accepts, and the unit's start / reload (upgrade) / stop commands work
on the real binary.

The tools come from Debian packages that `make sys-deps` installs: promtool
(`prometheus`), systemd-analyze (`systemd`), shellcheck (`shellcheck`). A
missing tool fails the test, naming the package; it does not skip.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import BINARY, LIMITED_KEY, free_port, running_gateway

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "tollgate.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
UNIT = DEPLOY / "tollgate.service"
INSTALL = DEPLOY / "install.sh"

OPS_KEY = "tg-ops-test-key-1"
ADMIN_TOKEN = "tg-ops-admin-token-0123456789"

# The metric families the brief for the dashboard names; the dashboard must
# show every one of them (and may show more).
DASHBOARD_MUST_SHOW = {
    "tollgate_requests_total",
    "gen_ai_server_request_duration_seconds",
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
    "tollgate_tokens_total",
    "tollgate_cost_usd_total",
    "tollgate_overhead_seconds",
    "tollgate_rate_limited_requests_total",
    "tollgate_upstream_errors_total",
    "tollgate_failovers_total",
    "tollgate_target_healthy",
    "tollgate_target_in_flight",
    "tollgate_target_ttft_ewma_seconds",
    "tollgate_budget_spend_usd",
    "tollgate_budget_remaining_usd",
    "tollgate_ledger_queued_records",
    "tollgate_ledger_written_records_total",
    "tollgate_ledger_dropped_records_total",
    "tollgate_config_reloads_total",
    "tollgate_requests_in_flight",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "tollgate_build_info",
}

OPS_CONFIG = """
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
  pid_file: "{tmp}/tollgate.pid"
  upgrade_sock: "{tmp}/upgrade.sock"
  grace_period_secs: 20
  graceful_shutdown_timeout_secs: 2
{mock_section}
providers:
  mock:
    kind: openai_compatible
    base_url: http://127.0.0.1:{mock}/v1
    timeouts: {{connect_ms: 1000, read_ms: 10000}}
  checked:
    kind: openai_compatible
    base_url: http://127.0.0.1:{mock}/v1
    health_check: {{path: /v1/models, interval_ms: 200, timeout_ms: 1000}}
models:
  gpt-4o-mini:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
  text-embedding-3-small:
    targets: [{{provider: mock, model: text-embedding-3-small}}]
  # The first target always answers 500 (the mock reads directives from the
  # model name): every request fails over, and the target gets ejected.
  flaky:
    targets:
      - {{provider: mock, model: "gpt-4o-mini@status=500", priority: 0}}
      - {{provider: mock, model: gpt-4o-mini, priority: 1}}
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
  # One target only: a scripted failure becomes the client's answer.
  broken:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
  checked-model:
    targets: [{{provider: checked, model: gpt-4o-mini}}]
store:
  url: "sqlite://{tmp}/tollgate.db"
admin:
  token: "{admin_token}"
teams:
  ops:
    limits: {{rpm: 10000}}
    budget: {{daily_usd: 10, monthly_usd: 100, soft_pct: 80}}
keys:
  - name: ops
    key: {ops_key}
    team: ops
    budget: {{daily_usd: 5, monthly_usd: 50}}
  - name: sdk-limited
    key: {limited_key}
    limits: {{rpm: 1}}
"""


# ---------------------------------------------------------------- helpers

def need_tool(name, package):
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: run `make sys-deps` "
            f"(it installs the Debian package `{package}`)"
        )
    return path


def run(cmd, **kw):
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw
    )


def http(method, url, body=None, headers=None, timeout=30):
    """(status, body bytes); never raises on an HTTP error status."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def chat(gw, content, model="gpt-4o-mini", key=OPS_KEY, stream=False, timeout=30):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return http(
        "POST", f"{gw['base_url']}/chat/completions", body,
        {"Authorization": f"Bearer {key}"}, timeout=timeout,
    )


def admin(gw, method, path, body=None):
    return http(method, f"{gw['admin']}{path}", body, {"Authorization": f"Bearer {ADMIN_TOKEN}"})


def scrape(gw):
    status, body = http("GET", f"{gw['admin']}/metrics")
    assert status == 200, body
    return body.decode()


def families(text):
    """Metric family names, from the `# TYPE` lines of an exposition."""
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) \S+", text, re.M)}


def sample(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else None


def wait_for(predicate, what, timeout=20.0, interval=0.1):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_port(port, proc=None, log=None, timeout=30.0):
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.time() > deadline:
                raise RuntimeError(f"port {port} never opened\n" + (log.read_text() if log else ""))
            time.sleep(0.1)


# A second gateway process that only hosts the built-in mock provider, for the
# upgrade test: the in-process mock is not one of the listeners handed over by
# `serve -u`, so it would go away with the old process.
MOCK_HOST_CONFIG = """
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 1
  pid_file: "{tmp}/mock-host.pid"
  upgrade_sock: "{tmp}/mock-host.sock"
  grace_period_secs: 0
  graceful_shutdown_timeout_secs: 1
mock_upstream:
  listen: "127.0.0.1:{mock}"
providers:
  mock: {{kind: openai_compatible, base_url: "http://127.0.0.1:{mock}/v1"}}
models:
  m: {{targets: [{{provider: mock, model: m}}]}}
"""


def write_config(tmp, inline_mock=True, mock=None):
    port, admin_port = free_port(), free_port()
    mock = mock or free_port()
    conf = tmp / "tollgate.yaml"
    mock_section = f'mock_upstream:\n  listen: "127.0.0.1:{mock}"' if inline_mock else ""
    conf.write_text(
        OPS_CONFIG.format(
            port=port, admin=admin_port, mock=mock, tmp=tmp, admin_token=ADMIN_TOKEN,
            ops_key=OPS_KEY, limited_key=LIMITED_KEY, mock_section=mock_section,
        )
    )
    gw = {
        "base_url": f"http://127.0.0.1:{port}/v1", "admin": f"http://127.0.0.1:{admin_port}",
        "port": port, "admin_port": admin_port, "mock": mock, "config": conf, "tmp": tmp,
    }
    return gw


def require_binary():
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make test` (it builds the binary first)")


# ---------------------------------------------------------------- the gateway with traffic

@pytest.fixture(scope="module")
def ops_gateway(tmp_path_factory):
    """The real binary with a store, an admin token, budgets, a limited key, a
    failing target and an actively checked provider."""
    require_binary()
    tmp = tmp_path_factory.mktemp("ops")
    gw = write_config(tmp)
    log_path = tmp / "gateway.log"
    with running_gateway(gw["config"], log_path, [gw["port"], gw["mock"], gw["admin_port"]]):
        gw["log"] = log_path
        yield gw


@pytest.fixture(scope="module")
def traffic(ops_gateway):
    """Drive requests that make every metric family appear; returns notes on
    what could not be exercised (e.g. an endpoint that does not exist yet)."""
    gw = ops_gateway
    notes = {}

    status, body = chat(gw, "hello ops")
    assert status == 200, body
    status, body = chat(gw, "stream please [[mock:words=40,chunks=10]]", stream=True)
    assert status == 200, body
    assert b"data: [DONE]" in body
    status, body = http(
        "POST", f"{gw['base_url']}/embeddings",
        {"model": "text-embedding-3-small", "input": ["one", "two"]},
        {"Authorization": f"Bearer {OPS_KEY}"},
    )
    assert status == 200, body

    # A limit refusal: rpm 1 on the `sdk-limited` key.
    chat(gw, "first", key=LIMITED_KEY)
    status, body = chat(gw, "second", key=LIMITED_KEY)
    assert status == 429, body

    # An upstream error that becomes the answer (the mock's scripted 500).
    status, body = chat(gw, "fail me [[mock:status=500]]", model="broken")
    assert status >= 500, body

    # Failover from the always-500 target to the healthy one, until the bad
    # target is ejected (routing.eject_after, 3 by default).
    for _ in range(4):
        status, body = chat(gw, "fail over", model="flaky")
        assert status == 200, body

    # A streamed request on the health-checked provider, once its check passed.
    wait_for(lambda: sample(scrape(gw), "tollgate_provider_health_check_up", gen_ai_provider_name="checked") == 1,
             "the active health check of provider `checked`")
    status, body = chat(gw, "checked [[mock:words=5]]", model="checked-model", stream=True)
    assert status == 200, body

    # A config reload that is refused, then one that applies: both results of
    # `tollgate_config_reloads_total`, and the old config serving in between.
    good = gw["config"].read_text()
    gw["config"].write_text(good + "\nno_such_section: 1\n")
    status, body = admin(gw, "POST", "/admin/v1/reload")
    gw["config"].write_text(good)
    if status == 404:
        notes["reload"] = f"POST /admin/v1/reload does not exist in this binary: {body[:200]!r}"
    else:
        assert status == 422, body
        err = json.loads(body)["error"]
        assert err["code"] == "invalid_config", err
        assert any(e["path"] == "no_such_section" for e in err["errors"]), err
        # The running config still serves.
        status, body = chat(gw, "still serving")
        assert status == 200, body
        status, body = admin(gw, "POST", "/admin/v1/reload")
        assert status == 200, body

    # The ledger has written the records.
    wait_for(lambda: (sample(scrape(gw), "tollgate_ledger_written_records_total") or 0) >= 8,
             "the ledger to write the usage records")
    return notes


# ---------------------------------------------------------------- metrics

def test_metrics_pass_promtool(ops_gateway, traffic):
    promtool = need_tool("promtool", "prometheus")
    text = scrape(ops_gateway)
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"promtool check metrics failed:\n{r.stdout}\n{r.stderr}"


# PromQL words that look like identifiers but are not metric names.
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_METRIC = re.compile(r"(?<![\w:])((?:tollgate|gen_ai|process)_[a-zA-Z0-9_]*)")
_SERIES_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def metric_names(expr):
    """Metric families an expression reads: strings, label matchers and
    grouping clauses (which hold label names such as gen_ai_request_model)
    removed first; `_bucket`/`_sum`/`_count` map to the histogram family."""
    e = _STRINGS.sub('""', expr)
    e = _MATCHERS.sub("", e)
    e = _GROUPING.sub("", e)
    return {_SERIES_SUFFIX.sub("", m) for m in _METRIC.findall(e)}


def variable_query(q):
    """The series selector of a template variable's `label_values(selector,
    label)` (the label is not a metric); other queries as they are."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", q, re.S)
    return m.group(1) if m else q


def dashboard_exprs():
    """Every PromQL expression in the dashboard: panel targets, template
    variable queries and annotations."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "expr" and isinstance(v, str):
                    out.append(v)
                elif k == "definition" and isinstance(v, str):
                    out.append(variable_query(v))
                elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                    out.append(variable_query(v["query"]))
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(DASHBOARD.read_text()))
    return out


def rule_exprs():
    """The `expr:` of every rule in alerts.yml (block scalars included)."""
    lines = ALERTS.read_text().splitlines()
    exprs, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, rest = len(m.group(1)), m.group(2)
        if rest in ("|", ">", "|-", ">-"):
            body = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i].strip())
                i += 1
            exprs.append(" ".join(body))
        else:
            exprs.append(rest)
            i += 1
    return exprs


def test_metric_name_extraction():
    e = ('histogram_quantile(0.99, sum by (le, gen_ai_request_model) '
         '(rate(gen_ai_server_request_duration_seconds_bucket{gen_ai_request_model=~"$model"}[5m])))'
         ' / on (instance) group_left (version) tollgate_build_info and up == 0')
    assert metric_names(e) == {"gen_ai_server_request_duration_seconds", "tollgate_build_info"}
    assert metric_names('process_open_fds / process_max_fds > 0.8') == {"process_open_fds", "process_max_fds"}
    q = variable_query('label_values(tollgate_requests_total{instance=~"$instance"}, gen_ai_request_model)')
    assert metric_names(q) == {"tollgate_requests_total"}


def test_dashboard_and_alerts_use_only_exported_metrics(ops_gateway, traffic):
    exported = families(scrape(ops_gateway))
    used_by = {}
    for source, exprs in (("deploy/grafana/tollgate.json", dashboard_exprs()),
                          ("deploy/prometheus/alerts.yml", rule_exprs())):
        assert exprs, f"no expressions found in {source}"
        for expr in exprs:
            for name in metric_names(expr):
                used_by.setdefault(name, set()).add(source)
    missing = {n: sorted(s) for n, s in used_by.items() if n not in exported}
    notes = "".join(f"\nnote: {v}" for v in traffic.values())
    assert not missing, (
        "metrics used by the dashboard or the alerts but absent from the live /metrics scrape "
        f"after the test traffic: {json.dumps(missing, indent=1, sort_keys=True)}{notes}"
    )
    dashboard_names = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert DASHBOARD_MUST_SHOW <= dashboard_names, (
        f"the dashboard does not show: {sorted(DASHBOARD_MUST_SHOW - dashboard_names)}"
    )


def test_dashboard_is_importable():
    d = json.loads(DASHBOARD.read_text())
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"instance", "model"} <= set(variables)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert t["expr"].strip(), p["title"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every dashboard query, with Grafana's variables substituted, parses as
    PromQL (checked by promtool as recording rules)."""
    promtool = need_tool("promtool", "prometheus")
    subst = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m",
             "$instance": ".*", "$model": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        assert "$" not in expr, f"unsubstituted variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = run([promtool, "check", "rules", f])
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------- Prometheus files

def test_prometheus_rules_and_config():
    promtool = need_tool("promtool", "prometheus")
    r = run([promtool, "check", "rules", ALERTS])
    assert r.returncode == 0, f"promtool check rules:\n{r.stdout}\n{r.stderr}"
    r = run([promtool, "check", "config", PROMETHEUS_YML])
    assert r.returncode == 0, f"promtool check config:\n{r.stdout}\n{r.stderr}"
    r = run([promtool, "test", "rules", ALERTS_TEST])
    assert r.returncode == 0, f"promtool test rules:\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------- install.sh and the unit

def test_install_sh_is_shellcheck_clean():
    shellcheck = need_tool("shellcheck", "shellcheck")
    r = run([shellcheck, INSTALL])
    assert r.returncode == 0, r.stdout + r.stderr


def unit_directives(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k, []).append(v)
    return out


def test_unit_follows_pingoras_upgrade_pattern_and_matches_the_config():
    u = unit_directives(UNIT.read_text())
    conf = (DEPLOY / "tollgate.yaml").read_text()
    bin_, cfg = "/usr/local/bin/tollgate", "--config /etc/tollgate/tollgate.yaml"
    assert u["Type"] == ["forking"]
    assert u["PIDFile"] == ["/run/tollgate/tollgate.pid"]
    assert re.search(r"^\s*pid_file:\s*/run/tollgate/tollgate\.pid\s*$", conf, re.M)
    assert re.search(r"^\s*upgrade_sock:\s*/run/tollgate/upgrade\.sock\s*$", conf, re.M)
    assert re.search(r'^\s*url:\s*"sqlite:///var/lib/tollgate/tollgate\.db"', conf, re.M)
    assert u["ExecStartPre"] == [f"{bin_} check {cfg}"]
    assert u["ExecStart"] == [f"{bin_} serve -d {cfg}"]
    # check first (a bad config aborts before the old process is signalled),
    # then SIGQUIT, then the new process takes the sockets over.
    assert u["ExecReload"] == [f"{bin_} check {cfg}", "/bin/kill -QUIT $MAINPID", f"{bin_} serve -u -d {cfg}"]
    assert u["RuntimeDirectory"] == ["tollgate"] and u["RuntimeDirectoryPreserve"] == ["yes"]
    assert u["StateDirectory"] == ["tollgate"]
    assert u["User"] == ["tollgate"] and u["Group"] == ["tollgate"]
    assert u["EnvironmentFile"] == ["-/etc/tollgate/env"]
    assert u["LimitNOFILE"] == ["1048576"]
    grace = int(re.search(r"grace_period_secs:\s*(\d+)", conf).group(1))
    drain = int(re.search(r"graceful_shutdown_timeout_secs:\s*(\d+)", conf).group(1))
    assert int(u["TimeoutStopSec"][0]) > grace + drain


def test_production_config_checks_out(tmp_path):
    """deploy/tollgate.yaml, next to the price table as install.sh puts it,
    passes `tollgate check` with the env file's variables set, and names the
    missing provider key otherwise."""
    require_binary()
    shutil.copy(DEPLOY / "tollgate.yaml", tmp_path / "tollgate.yaml")
    shutil.copy(ROOT / "conf/prices.yaml", tmp_path / "prices.yaml")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOLLGATE_ADMIN_LISTEN")}
    env["TOLLGATE_ADMIN_TOKEN"] = "0123456789abcdef0123456789abcdef"
    check = [BINARY, "check", "--config", tmp_path / "tollgate.yaml"]
    r = run(check, env=env)
    assert r.returncode == 1 and "providers.openai.api_key" in r.stderr, r.stdout + r.stderr
    r = run(check, env={**env, "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test",
                        "GEMINI_API_KEY": "g-test", "TOLLGATE_ADMIN_LISTEN": "10.0.0.5:9090"})
    assert r.returncode == 0, r.stdout + r.stderr


def passwd_entry(path, name):
    for line in Path(path).read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return f
    return None


def host_account_state():
    return run(["getent", "passwd", "tollgate"]).stdout, run(["getent", "group", "tollgate"]).stdout


def prepare_verify_root(root):
    """What `systemd-analyze verify --root` needs besides the installed files:
    the host's own units (sysinit.target and the rest of the boot graph)."""
    base = Path("/usr/lib/systemd/system")
    shutil.copytree(base, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)


def test_install_sh_into_scratch_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("install.sh sets owners (root:tollgate): run as root")
    require_binary()
    analyze = need_tool("systemd-analyze", "systemd")
    root = tmp_path / "root"
    host_before = host_account_state()

    def install():
        r = run(["bash", INSTALL, "--root", root, "--binary", BINARY, "--no-start"])
        assert r.returncode == 0, f"install.sh failed:\n{r.stdout}\n{r.stderr}"
        return r

    install()
    user = passwd_entry(root / "etc/passwd", "tollgate")
    group = passwd_entry(root / "etc/group", "tollgate")
    assert user and group, "the tollgate user and group must be in the scratch root's passwd/group"
    uid, gid = int(user[2]), int(group[2])
    assert 100 <= uid < 1000 and int(user[3]) == gid
    assert user[6] == "/usr/sbin/nologin"
    assert host_account_state() == host_before, "install.sh --root must not touch the host's users"

    def check(rel, mode, owner, group_id):
        p = root / rel
        assert p.exists(), rel
        st = p.stat()
        assert oct(st.st_mode & 0o7777) == oct(mode), f"{rel}: mode {oct(st.st_mode & 0o7777)}"
        assert (st.st_uid, st.st_gid) == (owner, group_id), f"{rel}: owner {st.st_uid}:{st.st_gid}"

    check("usr/local/bin/tollgate", 0o755, 0, 0)
    check("etc/tollgate", 0o750, 0, gid)
    check("etc/tollgate/tollgate.yaml", 0o640, 0, gid)
    check("etc/tollgate/env", 0o600, 0, gid)
    check("etc/tollgate/prices.yaml", 0o640, 0, gid)
    check("etc/systemd/system/tollgate.service", 0o644, 0, 0)
    check("var/lib/tollgate", 0o750, uid, gid)
    assert (root / "usr/local/bin/tollgate").read_bytes() == BINARY.read_bytes()
    assert (root / "etc/systemd/system/tollgate.service").read_text() == UNIT.read_text()
    assert (root / "etc/tollgate/tollgate.yaml").read_text() == (DEPLOY / "tollgate.yaml").read_text()
    assert (root / "etc/tollgate/prices.yaml").read_text() == (ROOT / "conf/prices.yaml").read_text()
    env_text = (root / "etc/tollgate/env").read_text()
    token = re.search(r"^TOLLGATE_ADMIN_TOKEN=(\S{16,})$", env_text, re.M)
    assert token, "install.sh generates an admin token"
    assert re.search(r"^#OPENAI_API_KEY=", env_text, re.M)

    # The installed config checks out with the environment the service gets.
    env = {**os.environ, "TOLLGATE_ADMIN_TOKEN": token.group(1), "OPENAI_API_KEY": "sk-test-placeholder"}
    for k in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOLLGATE_ADMIN_LISTEN"):
        env.pop(k, None)
    r = run([root / "usr/local/bin/tollgate", "check", "--config", root / "etc/tollgate/tollgate.yaml"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr

    # Twice: the operator's config and env survive, nothing is duplicated.
    (root / "etc/tollgate/tollgate.yaml").write_text("# the operator's own config\n")
    (root / "etc/tollgate/env").write_text("OPENAI_API_KEY=sk-operator\n")
    second = install()
    assert "kept the existing" in second.stdout
    assert (root / "etc/tollgate/tollgate.yaml").read_text() == "# the operator's own config\n"
    assert (root / "etc/tollgate/env").read_text() == "OPENAI_API_KEY=sk-operator\n"
    for f in ("etc/passwd", "etc/group"):
        lines = (root / f).read_text().splitlines()
        assert sum(line.startswith("tollgate:") for line in lines) == 1, f"{f}: {lines}"
    assert passwd_entry(root / "etc/passwd", "tollgate")[2] == str(uid)
    check("etc/tollgate/env", 0o600, 0, gid)
    check("var/lib/tollgate", 0o750, uid, gid)
    assert host_account_state() == host_before

    # systemd's own verdict on the installed unit, resolved inside the root
    # (so ExecStart= must point at the binary install.sh put there).
    prepare_verify_root(root)
    r = run([analyze, "verify", f"--root={root}", "tollgate.service"], cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "tollgate.service" not in out, f"systemd-analyze verify:\n{out}"
    # The sandbox stays tight: systemd's own exposure score (0 best, 10 worst).
    r = run([analyze, "security", "--offline=true", f"--root={root}", "tollgate.service"], cwd=tmp_path)
    m = re.search(r"Overall exposure level for tollgate\.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 2.5, r.stdout[-3000:] + r.stderr
    # ...and verify does catch a broken unit: a missing binary.
    (root / "usr/local/bin/tollgate").rename(root / "usr/local/bin/tollgate.moved")
    r = run([analyze, "verify", f"--root={root}", "tollgate.service"], cwd=tmp_path)
    assert r.returncode != 0 and "is not executable" in r.stdout + r.stderr, r.stdout + r.stderr


# ---------------------------------------------------------------- the unit's commands, without systemd

def read_pid(path, timeout=20.0):
    def get():
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None
    return wait_for(get, f"a PID in {path}", timeout=timeout)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_unit_commands_start_upgrade_stop(tmp_path):
    """What the unit's ExecStart= / ExecReload= / stop do, run by hand on the
    real binary: `serve -d` daemonizes and writes the PID file; the reload
    chain (check, SIGQUIT, `serve -u -d`) replaces the process while requests
    keep succeeding and the ledger keeps recording; SIGTERM stops it."""
    require_binary()
    mock = free_port()
    host_conf = tmp_path / "mock-host.yaml"
    host_conf.write_text(MOCK_HOST_CONFIG.format(port=free_port(), admin=free_port(), mock=mock, tmp=tmp_path))
    host_log = open(tmp_path / "mock-host.log", "w")
    host = subprocess.Popen([str(BINARY), "serve", "--config", str(host_conf)],
                            stdout=host_log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})
    gw = write_config(tmp_path, inline_mock=False, mock=mock)
    conf, pid_file = gw["config"], tmp_path / "tollgate.pid"
    env = {**os.environ, "RUST_LOG": "info"}
    log = open(tmp_path / "daemon.log", "w")
    pids = []

    def logs():
        log.flush()
        return (tmp_path / "daemon.log").read_text()[-6000:]

    def cmd(*args, timeout=60):
        # Like systemd: the command's exit is what counts; the daemon lives on.
        r = subprocess.run([str(BINARY), *args], stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        return r.returncode

    try:
        wait_port(mock, host, tmp_path / "mock-host.log")
        # ExecStartPre= and ExecStart=
        assert cmd("check", "--config", conf) == 0, logs()
        assert cmd("serve", "-d", "--config", conf) == 0, logs()
        old = read_pid(pid_file)
        pids.append(old)
        assert alive(old), logs()
        wait_port(gw["port"], timeout=30)
        wait_port(gw["admin_port"], timeout=30)

        status, body = chat(gw, "before the upgrade")
        assert status == 200, f"{body}\n{logs()}"
        # The daemon's store and ledger work: the admin API answers from the
        # store, and the request reaches the ledger. (Threads started before
        # the daemon's fork, such as the store's runtime or the ledger writer,
        # would not exist in the daemon.)
        try:
            status, body = http("GET", f"{gw['admin']}/admin/v1/teams",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        except (TimeoutError, OSError) as e:
            pytest.fail(f"after `serve -d`, the admin API does not answer a store query ({e!r}): "
                        f"the daemon has no store runtime\n{logs()}")
        assert status == 200, body
        written = lambda: sample(scrape(gw), "tollgate_ledger_written_records_total") or 0  # noqa: E731
        deadline = time.time() + 10
        while written() < 1 and time.time() < deadline:
            time.sleep(0.1)
        assert written() >= 1, (
            "after `serve -d`, the ledger writes nothing (tollgate_ledger_queued_records = "
            f"{sample(scrape(gw), 'tollgate_ledger_queued_records')}): the daemon has no ledger writer\n{logs()}"
        )

        # Load during the upgrade: sequential requests must all succeed.
        failures, done, ok = [], threading.Event(), [0]

        def load():
            while not done.is_set():
                try:
                    s, b = chat(gw, "during the upgrade", timeout=20)
                    if s == 200:
                        ok[0] += 1
                    else:
                        failures.append((s, b[:200]))
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))
                time.sleep(0.02)

        # A stream that is in flight while the old process hands over.
        stream_result = {}

        def slow_stream():
            stream_result["r"] = chat(gw, "slow [[mock:words=20,chunks=20,gap_ms=100]]", stream=True, timeout=30)

        loader = threading.Thread(target=load)
        streamer = threading.Thread(target=slow_stream)
        loader.start()
        streamer.start()
        time.sleep(0.3)

        # ExecReload=: check, SIGQUIT to $MAINPID, then the new process.
        assert cmd("check", "--config", conf) == 0, logs()
        os.kill(old, signal.SIGQUIT)
        assert cmd("serve", "-u", "-d", "--config", conf) == 0, logs()
        new = wait_for(lambda: (p := read_pid(pid_file)) != old and p, "the new PID in the PID file")
        pids.append(new)
        assert alive(new), logs()
        wait_for(lambda: not alive(old), "the old process to drain and exit", timeout=30)
        time.sleep(0.5)
        done.set()
        loader.join(timeout=30)
        streamer.join(timeout=30)
        assert not failures, f"requests failed during the upgrade: {failures[:5]}\n{logs()}"
        assert ok[0] > 0
        status, body = stream_result["r"]
        assert status == 200 and b"data: [DONE]" in body, body[-300:]

        # The new process serves, and its ledger holds every request (the old
        # process flushed its own before exiting).
        status, body = chat(gw, "after the upgrade")
        assert status == 200, f"{body}\n{logs()}"
        expected = ok[0] + 3
        def ledger_count():
            s, b = admin(gw, "GET", "/admin/v1/usage?group_by=model")
            if s != 200:
                return None
            n = sum(d["requests"] for d in json.loads(b)["data"])
            return n if n >= expected else None
        wait_for(ledger_count, f"{expected} requests in the ledger", timeout=15)

        # Stop: SIGTERM (systemd's KillSignal=).
        os.kill(new, signal.SIGTERM)
        wait_for(lambda: not alive(new), "the process to stop on SIGTERM", timeout=15)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
        host.kill()
        host.wait(timeout=10)
        host_log.close()
