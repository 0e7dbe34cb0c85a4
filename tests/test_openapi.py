"""The published OpenAPI document is valid and the app behaves as it says."""

import tempfile

import schemathesis
from falcon import testing
from hypothesis import HealthCheck, settings

from mab.config import config_from_document
from mab.web import create_app, load_openapi_document
from tests.conftest import ITEMS_CSV

METHODS = {"get", "post", "put", "delete", "patch"}


def build_app():
    # Built at collection, not in a fixture: schemathesis's lazy fixture
    # loader reads a pytest-internal attribute that pytest 9 removed.
    directory = tempfile.mkdtemp(prefix="mab-openapi-test-")
    with open(f"{directory}/items.csv", "w") as f:
        f.write(ITEMS_CSV)
    config = config_from_document({}, {"MAB_DATA": f"{directory}/items.csv", "MAB_CACHE_DIR": f"{directory}/cache"})
    return create_app(config, load="now")


# 413 is this API's documented answer to item_ids over max_items (and to a
# body over max_body_bytes), so it counts as rejecting schema-violating data.
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 404, 405, 411, 413, 415, 422]}}}
)
schema = schemathesis.openapi.from_wsgi("/openapi.json", build_app(), config=CONFIG)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_app_conforms_to_its_document(case):
    # Checks every response's status code, headers and body against the
    # document, and that no request produces a 5xx.
    case.call_and_validate()


def test_document_validates_against_the_openapi_schema():
    import jsonschema_rs
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    document = load_openapi_document()
    assert document["openapi"].startswith("3.1")
    jsonschema_rs.validator_for(OPENAPI_31).validate(document)


def test_every_documented_operation_exists_and_no_other(app):
    client = testing.TestClient(app)
    for path, operations in load_openapi_document()["paths"].items():
        for method in METHODS:
            status = client.simulate_request(method.upper(), path, json={"item_ids": ["item-1"]}).status_code
            if method in operations:
                assert status not in (404, 405), (method, path)
            else:
                assert status == 405, (method, path)
