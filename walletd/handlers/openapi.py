"""The OpenAPI 3.1 document, built from the route table and the pydantic models.

3.1 rather than 3.0: its Schema Object is JSON Schema 2020-12, which is what pydantic emits
(`anyOf` with `{"type": "null"}`, numeric `exclusiveMaximum`, `examples`), so the models' schemas
go in unchanged; for 3.0 every nullable field and bound would need rewriting, a translation
layer that could drift from what the server enforces. Swagger UI and ReDoc both read 3.1.

Parameters may travel in the query string or in a JSON body (see endpoint.py). On POST and PUT
the query parameters are therefore documented as optional, and the request body's schema names
the required ones: each must appear in one of the two places. GET operations document the query
string only (a body on GET has no defined meaning in HTTP), so there the required parameters are
marked required.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from walletd import __version__
from walletd.auth.throttle import TooManyAttempts
from walletd.domain import errors as e
from walletd.handlers import errors as he
from walletd.handlers.endpoint import Endpoint
from walletd.handlers.schemas import ErrorOut

_REF = "#/components/schemas/{model}"

_TOKEN_ERRORS = [e.TokenMissing, e.TokenInvalid, e.TokenExpired, e.WrongRole]
_PARAM_ERRORS = [he.ValidationFailed, he.ParameterConflict, he.MalformedBody, he.UnsupportedMediaType]
_IDEMPOTENCY_DOC = ("A retry with the same key and the same parameters returns the first response byte for byte "
                    "(header Idempotent-Replayed: true) and moves no money again; the same key with other "
                    "parameters is 422 idempotency_key_reused. Keys are scoped to the caller and kept "
                    "WALLETD_IDEMPOTENCY_RETENTION seconds (default 86400: 24 hours); a retry after that is a new "
                    "request.")
_CHALLENGE_HEADER = {"WWW-Authenticate": {"description": "How to authenticate (RFC 7235; RFC 6750 error codes)",
                                          "schema": {"type": "string"}}}
_OPERATOR_HEADER = {"name": "X-Operator-Key", "in": "header", "schema": {"type": "string"},
                    "description": "The operator credential (env WALLETD_OPERATOR_KEY): operator actions need it; on a "
                                   "route a payment service may call too, it replaces the token."}
_RETRY_HEADER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}

DESCRIPTION = """Multi-currency e-wallet with a double-entry ledger.

* Amounts are decimal strings (JSON numbers are accepted and parsed exactly); responses carry
  fixed-point strings with 10 places.
* Parameters go in the query string (the original service's convention, also on POST and PUT) or
  in a JSON object body. Both may be used at once; a parameter given in both places with different
  values is refused (400 `parameter_conflict`). On POST and PUT, each parameter the body schema
  marks required must appear in the query string or in the body.
* Auth: `Authorization: Bearer <jwt>` or header `token: <jwt>`; `GET /user/get/token` takes HTTP Basic;
  operator actions take header `X-Operator-Key` (who may do what: docs/authority.md).
* Errors: `{status, code, message, request_id}`, plus `errors` (one item per field) for
  validation failures and `detail` where useful. Match on `code`; `message` is for people.

| code | status | meaning |
|---|---|---|
"""


def model_schema(model: type[BaseModel], components: dict,
                 mode: Literal["validation", "serialization"] = "validation") -> dict:
    schema = model.model_json_schema(ref_template=_REF, mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def documented_errors(spec: Endpoint) -> dict[int, list[tuple[str, str]]]:
    """status -> [(code, message)] for every error the operation can answer."""
    declared: list = list(spec.errors)
    if spec.token_role is not None:
        # A route that takes either token role cannot meet a token of the wrong one.
        declared += [err for err in _TOKEN_ERRORS if err is not e.WrongRole or len(spec.token_roles) == 1]
    if "operator" in spec.auth:
        declared += [e.OperatorKeyRequired, TooManyAttempts]
    if spec.auth == ("basic",):
        declared += [e.TokenMissing, e.InvalidCredentials]
    if spec.params is not None:
        declared += _PARAM_ERRORS
    if spec.idempotent:
        declared += [he.InvalidIdempotencyKey]
    declared.append(e.Unavailable)  # every operation reads the database
    by_status: dict[int, list[tuple[str, str]]] = {}
    for item in declared:
        cls, message = item if isinstance(item, tuple) else (item, getattr(item, "message", None))
        if issubclass(cls, web.HTTPException):  # raised as an aiohttp exception (auth.throttle.TooManyAttempts)
            status, code = cls.status_code, he.http_code(cls)
            message = message or he.HTTP_CODES.get(status, ("", cls.__name__))[1]
        else:
            status, code = he.status_of(cls), cls.code
        if cls is e.WrongRole:
            message = message.format(role=spec.token_role)
        entry = (code, message)
        bucket = by_status.setdefault(status, [])
        if entry not in bucket:
            bucket.append(entry)
    # Every request's body is read (within WALLETD_BODY_TIMEOUT_SECONDS) before its handler runs
    # (middleware.read_body_within), so any operation can refuse a body too large (413) or too slow (408).
    by_status.setdefault(413, []).append((he.HTTP_CODES[413][0], "Request Entity Too Large"))
    by_status.setdefault(408, []).append((he.HTTP_CODES[408][0], "request body not received in time"))
    by_status.setdefault(503, []).append((he.CONNECTION_CAP[0], "too many connections, retry later"))
    return by_status


def operation(spec: Endpoint, operation_id: str, components: dict) -> dict:
    op: dict[str, Any] = {"operationId": operation_id, "summary": spec.summary, "tags": list(spec.tags) or ["walletd"]}
    if spec.description:
        op["description"] = spec.description
    parameters = list(spec.extra_headers)
    if "operator" in spec.auth:
        parameters.append({**_OPERATOR_HEADER, "required": spec.token_role is None and spec.open_when is None})
    body_allowed = spec.method in ("POST", "PUT")
    if spec.params is not None:
        schema = spec.params.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            needed = name in required
            text = prop.get("description", "")
            if needed and body_allowed:
                text = (text + " " if text else "") + "Required here or in the JSON body."
            parameters.append({"name": name, "in": "query", "required": needed and not body_allowed,
                               "schema": prop, **({"description": text} if text else {})})
        if body_allowed:
            op["requestBody"] = {
                "required": False,
                "description": "The same parameters as a JSON object, instead of or besides the query string.",
                "content": {"application/json": {"schema": model_schema(spec.params, components)}},
            }
    if spec.idempotent:
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                           "description": _IDEMPOTENCY_DOC})
    if parameters:
        op["parameters"] = parameters
    ok: dict[str, Any] = {"description": "OK"}
    if spec.response is not None:
        ok["content"] = {"application/json": {"schema": model_schema(spec.response, components, mode="serialization")}}
    if spec.other_content:
        ok.setdefault("content", {}).update(dict(spec.other_content))
    if spec.idempotent:
        ok["headers"] = {"Idempotent-Replayed": {"description": "`true` when this is the stored first response",
                                                 "schema": {"type": "string", "enum": ["true"]}}}
    responses: dict[str, Any] = {"200": ok}
    error_ref = model_schema(ErrorOut, components, mode="serialization")
    for status, entries in sorted(documented_errors(spec).items()):
        codes = sorted({code for code, _ in entries})
        response: dict[str, Any] = {
            "description": "; ".join(f"`{code}`: {message}" for code, message in entries),
            "content": {"application/json": {"schema": {
                "allOf": [error_ref, {"type": "object", "properties": {"code": {"enum": codes}}}]}}},
        }
        if status == 401:
            response["headers"] = _CHALLENGE_HEADER
        elif status in (429, 503):
            response["headers"] = _RETRY_HEADER
        responses[str(status)] = response
    op["responses"] = responses
    security: list[dict] = []
    if spec.token_role is not None:
        security += [{"bearer": []}, {"tokenHeader": []}]
    if "operator" in spec.auth:
        security.append({"operatorKey": []})
    if spec.auth == ("basic",):
        security.append({"basic": []})
    if security:
        op["security"] = security
    return op


def document(entries: list[tuple[Endpoint, str]]) -> dict:
    """The whole document for the (endpoint, operationId) pairs, in route order."""
    components: dict = {}
    paths: dict[str, dict] = {}
    for spec, operation_id in entries:
        paths.setdefault(spec.path, {})[spec.method.lower()] = operation(spec, operation_id, components)
    table = "".join(f"| `{code}` | {status} | {meaning} |\n" for code, status, meaning in he.catalogue())
    return {
        "openapi": "3.1.0",
        "info": {"title": "walletd", "version": __version__, "description": DESCRIPTION + table},
        "tags": [{"name": name} for name in dict.fromkeys(tag for spec, _ in entries for tag in spec.tags)],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "tokenHeader": {"type": "apiKey", "in": "header", "name": "token"},
                "basic": {"type": "http", "scheme": "basic"},
                "operatorKey": {"type": "apiKey", "in": "header", "name": "X-Operator-Key",
                                "description": "The operator credential (WALLETD_OPERATOR_KEY)"},
            },
        },
    }
