"""The admin API's OpenAPI document is valid OpenAPI 3.1 (checked by a
validator no one here wrote) and the gateway serves it unchanged."""

import json
import urllib.request

from openapi_spec_validator import validate

from conftest import ROOT


def test_admin_openapi_document_validates():
    doc = json.loads((ROOT / "docs" / "admin-api.openapi.json").read_text())
    validate(doc)


def test_gateway_serves_the_document(gateway):
    url = f"{gateway['admin']}/admin/v1/openapi.json"
    with urllib.request.urlopen(url) as r:
        served = json.load(r)
    assert served == json.loads((ROOT / "docs" / "admin-api.openapi.json").read_text())
