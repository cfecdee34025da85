"""/openapi.json as client generators read it (issue 17).

Operation ids are the route functions' names (``list_deployments``, not FastAPI's
``list_deployments_api_v1_deployments_get``), unique across the API; the publish body
is one flat multipart object (form fields and the ``source`` file, ``format: binary``)
instead of ``allOf`` + properties, which openapi-python-client cut down to the
``allOf``. tests/test_client_integrations.py generates a client and uses it for real.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shipway.api import create_app
from shipway.builds.schemas import PublishForm


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app().openapi()


def test_operation_ids_are_route_names_and_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert [name for name, count in Counter(ids).items() if count > 1] == []
    assert all(op.isidentifier() and "api_v1" not in op for op in ids), ids
    assert {"list_deployments", "publish_version", "promote", "rollback", "get_job"} <= set(ids)
    assert "change_config" in ids  # a name of its own where the function's is too short


def test_the_publish_body_is_one_flat_multipart_object(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/api/v1/deployments/{deployment_id}/versions"]["post"]
    ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert "allOf" not in body
    assert set(body["properties"]) == set(PublishForm.model_fields) | {"source"}
    assert body["required"] == ["source"]
    assert body["properties"]["source"]["format"] == "binary"
    assert not any("allOf" in schema for schema in spec["components"]["schemas"].values())
