"""The OpenAPI document as clients and generators should read it.

FastAPI's document says less than the app does, and some of it differently:
errors leave as `application/problem+json` in the one Problem shape (also a
request that fails validation, which FastAPI would show as its own
HTTPValidationError); an optional query or header parameter is absent or a
string, never `null` (a generated client would otherwise offer `None` as a
value to send); and the operations are linked, so that a client (or a
stateful test) knows that an upload's `id` is what a read or a delete takes.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.schemas import UploadForm

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# FastAPI's validation-error schemas: the app never sends them (see api.problems)
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

OBJECT_ID_FROM_RECORD = {"object_id": "$response.body#/id"}
OBJECT_ID_FROM_FIRST_ITEM = {"object_id": "$response.body#/items/0/id"}


def _link(operation_id: str, parameters: dict[str, str], description: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": dict(parameters), "description": description}


RECORD_LINKS = {
    "GetObject": _link("get_object", OBJECT_ID_FROM_RECORD, "Read this object's record"),
    "DeleteObject": _link("delete_object", OBJECT_ID_FROM_RECORD, "Delete this object"),
    "ListDeliveries": _link(
        "list_deliveries", OBJECT_ID_FROM_RECORD, "This object's webhook deliveries"
    ),
}
FIRST_ITEM_LINKS = {
    "GetFirstObject": _link(
        "get_object", OBJECT_ID_FROM_FIRST_ITEM, "Read the first listed object's record"
    ),
    "DeleteFirstObject": _link(
        "delete_object", OBJECT_ID_FROM_FIRST_ITEM, "Delete the first listed object"
    ),
}
# (operation id, status) -> the links of that response
LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("upload_object", "201"): RECORD_LINKS,
    ("upload_object", "202"): RECORD_LINKS,
    ("get_object", "200"): RECORD_LINKS,
    ("delete_object", "200"): {"GetObject": RECORD_LINKS["GetObject"]},
    ("list_deliveries", "200"): {
        "ReplayFirstDelivery": _link(
            "replay_delivery",
            {"object_id": "$request.path.object_id", "number": "$response.body#/items/0/number"},
            "Send the first delivery again",
        )
    },
    ("list_objects", "200"): {
        **FIRST_ITEM_LINKS,
        "NextPage": _link(
            "list_objects",
            {
                "cursor": "$response.body#/next_cursor",
                "state": "$request.query.state",
                "limit": "$request.query.limit",
            },
            "The next page (while `next_cursor` is not null)",
        ),
    },
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if not parameter.get("required", False):
                    parameter["schema"] = _without_null(parameter["schema"])
            for status, response in operation.get("responses", {}).items():
                if status.startswith(("4", "5")):
                    _as_problem(response)
                links = LINKS.get((operation["operationId"], status))
                if links is not None:
                    response["links"] = copy.deepcopy(links)  # no YAML aliases
    schemas = document["components"]["schemas"]
    for name in FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    schemas["UploadForm"] = UploadForm.model_json_schema()
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    app.openapi_schema = document
    return document


def _as_problem(response: dict[str, Any]) -> None:
    """Error bodies are `application/problem+json` Problems, whatever FastAPI says."""
    content = response.get("content", {})
    schema = (content.get("application/json") or content.get("application/problem+json") or {}).get(
        "schema", PROBLEM_REF
    )
    if schema.get("$ref", "").rsplit("/", 1)[-1] in FASTAPI_VALIDATION_SCHEMAS:
        schema = PROBLEM_REF
        response["description"] = "invalid_request"
    response["content"] = {"application/problem+json": {"schema": schema}}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, null]` -> X, keeping the annotations (title, default...)."""
    variants = schema.get("anyOf")
    if not variants:
        return schema
    kept = [variant for variant in variants if variant != {"type": "null"}]
    if len(kept) != 1:
        return schema
    annotations = {
        key: value
        for key, value in schema.items()
        if key != "anyOf" and not (key == "default" and value is None)
    }
    return {**kept[0], **annotations}
