"""Prompt APIs judged by tools no one here wrote: the generated OpenAPI
documents validate with `openapi-spec-validator`, and `schemathesis`, driven
by the catalog's document, finds no 5xx on the real binary."""

import json
import os
import re
import subprocess
import time
import urllib.request

import pytest
from openapi_spec_validator import validate

from conftest import free_port, running_gateway

ADMIN = "tg-apis-admin-token-0123456789"
OWNER = "tg-apis-owner-key-1"
FUZZER = "tg-apis-fuzzer-key-1"

# The JSON API's prompt carries a mock directive so the mock's reply satisfies
# the schema: the fuzz run is about the gateway's handling, not the model's.
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
  anthropic:
    kind: anthropic
    base_url: http://127.0.0.1:{mock}
    api_key: mock-anthropic-key
models:
  gpt-4o-mini:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
  claude:
    targets: [{{provider: anthropic, model: claude-sonnet-4-5}}]
store:
  url: "sqlite://{tmp}/tollgate.db"
admin:
  token: {admin_token}
teams:
  owners: {{}}
  fuzzers: {{}}
keys:
  - {{name: owner, key: {owner}, team: owners}}
  - {{name: fuzzer, key: {fuzzer}, team: fuzzers}}
apis:
  - name: sentiment
    team: owners
    status: published
    description: Classify the sentiment of a text.
    model: gpt-4o-mini
    system: "Answer in {{{{lang}}}}."
    prompt: "Classify: {{{{text}}}} ({{{{stars}}}} stars)"
    variables:
      - {{name: text, description: the text, max_length: 4000}}
      - {{name: lang, default: en, enum: [en, de, fr]}}
      - {{name: stars, type: integer, required: false}}
    subscribers: [fuzzers]
  - name: label
    team: owners
    status: published
    model: claude
    prompt: "Label {{{{text}}}} with {{{{tags}}}} {{{{strict}}}} {{{{weight}}}} {{{{extra}}}} [[mock:reply={{\\"label\\":\\"positive\\"}}]]"
    variables:
      - {{name: text}}
      - {{name: tags, type: array, default: []}}
      - {{name: strict, type: boolean, default: false}}
      - {{name: weight, type: number, required: false}}
      - {{name: extra, type: object, required: false}}
    output:
      mode: json
      schema: {{type: object, required: [label], properties: {{label: {{enum: [positive, negative]}}}}}}
    subscribers: [fuzzers]
"""


def call(method, url, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apis")
    port, admin, mock = free_port(), free_port(), free_port()
    conf = tmp / "tollgate.yaml"
    conf.write_text(CONFIG.format(
        port=port, admin=admin, mock=mock, tmp=tmp, admin_token=ADMIN, owner=OWNER, fuzzer=FUZZER
    ))
    with running_gateway(conf, tmp / "gateway.log", [port, admin]):
        base = f"http://127.0.0.1:{port}"
        admin_base = f"http://127.0.0.1:{admin}/admin/v1"
        # A version created through the admin API, published, then a second one,
        # with the first deprecated: the catalog holds every kind of state.
        for version in ("v1", "v2"):
            status, body = call("POST", f"{admin_base}/apis", {
                "name": "translate", "version": version, "team": "owners",
                "model": "gpt-4o-mini", "status": "published", "auto_approve": True,
                "prompt": "Translate into {{lang}}: {{text}}",
                "variables": [{"name": "text"}, {"name": "lang", "default": "fr", "enum": ["fr", "de"]}],
            }, ADMIN)
            assert status == 201, body
        status, body = call("POST", f"{admin_base}/apis/translate/v1/status",
                            {"status": "deprecated", "sunset": "2099-01-01"}, ADMIN)
        assert status == 200, body
        status, body = call("POST", f"{base}/catalog/translate/subscription", {}, FUZZER)
        assert status == 201 and body["status"] == "approved", body
        yield {"base": base, "admin": admin_base, "tmp": tmp}


def fetch(url, token):
    req = urllib.request.Request(url)
    req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def test_catalog_document_validates(gw):
    doc = fetch(f"{gw['base']}/openapi.json", FUZZER)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/apis/sentiment/v1", "/apis/label/v1", "/apis/translate/v1", "/apis/translate/v2", "/catalog",
    }
    assert doc["paths"]["/apis/translate/v1"]["post"]["deprecated"] is True


def test_every_api_document_validates(gw):
    catalog = fetch(f"{gw['base']}/catalog", FUZZER)
    assert len(catalog["apis"]) == 4
    for api in catalog["apis"]:
        doc = fetch(gw["base"] + api["openapi"], FUZZER)
        validate(doc)
        assert list(doc["paths"]) == [api["path"]]
    # And the admin API's view of the same documents.
    req = urllib.request.Request(f"{gw['admin']}/apis/translate/v2/openapi.json")
    req.add_header("authorization", f"Bearer {ADMIN}")
    with urllib.request.urlopen(req) as r:
        validate(json.load(r))


def test_fuzzing_finds_no_server_error(gw):
    schema = gw["tmp"] / "catalog.openapi.json"
    schema.write_text(json.dumps(fetch(f"{gw['base']}/openapi.json", FUZZER)))
    examples = os.environ.get("FUZZ_EXAMPLES", "40")
    out = subprocess.run(
        [
            os.path.join(os.path.dirname(os.sys.executable), "schemathesis"), "run", str(schema),
            "--url", gw["base"],
            "--header", f"Authorization: Bearer {FUZZER}",
            "--checks", "not_a_server_error",
            "--max-examples", examples,
            "--workers", "2",
            "--seed", "1",
            "--generation-database", "none",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=600,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    m = re.search(r"(\d+) generated, (\d+) passed", report)
    assert m and int(m.group(1)) >= 100 and m.group(1) == m.group(2), report
    assert "Selected: 5/5" in report and "Tested: 5" in report, report
    # It reached the model through every API, not only the validation errors.
    deadline = time.time() + 10
    while True:
        req = urllib.request.Request(f"{gw['admin']}/usage?group_by=api")
        req.add_header("authorization", f"Bearer {ADMIN}")
        with urllib.request.urlopen(req) as r:
            rows = {row["group"]: row for row in json.load(r)["data"] if row.get("group")}
        served = {api: row["requests"] - row["errors"] for api, row in rows.items()}
        if all(served.get(a, 0) > 0 for a in ("sentiment/v1", "label/v1", "translate/v1", "translate/v2")):
            break
        assert time.time() < deadline, (served, report)
        time.sleep(0.2)
