"""Start the real `tollgate` binary (built by `make test`) on free loopback
ports, with its built-in mock provider, for the official SDK tests."""

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("TOLLGATE_BIN", ROOT / "target" / "debug" / "tollgate"))

CLIENT_KEY = "tg-sdk-test-key-1"
LIMITED_KEY = "tg-sdk-limited-key"
NARROW_KEY = "tg-sdk-narrow-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
  pid_file: "{tmp}/tollgate.pid"
  upgrade_sock: "{tmp}/upgrade.sock"
  grace_period_secs: 0
  graceful_shutdown_timeout_secs: 1
mock_upstream:
  listen: "127.0.0.1:{mock}"
providers:
  mock:
    kind: openai_compatible
    base_url: http://127.0.0.1:{mock}/v1
    timeouts: {{connect_ms: 1000, read_ms: 10000}}
  anthropic:
    kind: anthropic
    base_url: http://127.0.0.1:{mock}
    api_key: mock-anthropic-key
  gemini:
    kind: gemini
    base_url: http://127.0.0.1:{mock}
    api_key: mock-gemini-key
  azure:
    kind: azure
    base_url: http://127.0.0.1:{mock}
    api_key: mock-azure-key
models:
  gpt-4o-mini:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
  text-embedding-3-small:
    targets: [{{provider: mock, model: text-embedding-3-small}}]
  private-model:
    targets: [{{provider: mock, model: private}}]
  claude-test:
    targets: [{{provider: anthropic, model: claude-sonnet-4-5}}]
  gemini-test:
    targets: [{{provider: gemini, model: gemini-2.5-flash}}]
  azure-test:
    targets: [{{provider: azure, model: gpt-4o-deployment}}]
  azure-embed:
    targets: [{{provider: azure, model: embed-deployment}}]
  gemini-embed:
    targets: [{{provider: gemini, model: text-embedding-004}}]
keys:
  - name: sdk
    key: {client_key}
    models: [gpt-4o-mini, text-embedding-3-small, claude-test, gemini-test, azure-test, azure-embed, gemini-embed]
  - name: sdk-limited
    key: {limited_key}
    limits: {{rpm: 1}}
"""


@contextlib.contextmanager
def running_gateway(conf, log_path, ports, timeout=30.0):
    """The binary serving `conf` for the duration of the block, once every
    port in `ports` accepts connections; its output goes to `log_path`."""
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(BINARY), "serve", "--config", str(conf)],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        deadline = time.time() + timeout
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        log.flush()
                        raise RuntimeError(f"port {port} never opened\n" + log_path.read_text())
                    time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make test` (it builds the binary first)")
    tmp = tmp_path_factory.mktemp("tollgate")
    port, admin, mock = free_port(), free_port(), free_port()
    conf = tmp / "tollgate.yaml"
    conf.write_text(
        CONFIG.format(
            port=port, admin=admin, mock=mock, tmp=tmp,
            client_key=CLIENT_KEY, limited_key=LIMITED_KEY,
        )
    )
    with running_gateway(conf, tmp / "gateway.log", [port, mock]):
        yield {"base_url": f"http://127.0.0.1:{port}/v1", "admin": f"http://127.0.0.1:{admin}", "mock": f"http://127.0.0.1:{mock}"}
