"""Request parameters: the query string and a JSON object body, merged and validated.

Parameters may travel in the query string (the original's convention, even on POST/PUT) or in
a JSON object body. Both are merged; a parameter given in both places with different values is
refused (400) rather than guessed at, because a payment API must not pick one silently. Text the
database cannot store (NUL, unpaired surrogates) is refused here, before any SQL.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from walletd.domain import errors
from walletd.handlers.errors import (
    MalformedBody,
    ParameterConflict,
    UnsupportedMediaType,
    ValidationFailed,
)


async def gather_params(request: web.Request) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ParameterConflict(f"parameter {key} given more than once")
        merged[key] = values[0]
    if request.body_exists:
        try:
            text = await request.text()  # client_max_size bounds this; aiohttp answers 413 past it
        except (UnicodeDecodeError, LookupError):  # bytes not in the declared (or an unknown) charset
            raise MalformedBody("body is not valid text in its declared charset") from None
        if text.strip():
            if request.content_type not in ("application/json", "text/plain", "application/octet-stream", ""):
                raise UnsupportedMediaType()
            try:
                body = _BODY_DECODER.decode(text)
            except _RepeatedKey as exc:
                raise ParameterConflict(f"parameter {exc.args[0]} given more than once in the body") from None
            except (ValueError, RecursionError):  # JSONDecodeError, or an integer past Python's digit limit
                raise MalformedBody() from None
            if not isinstance(body, dict):
                raise MalformedBody("JSON body must be an object")
            for key, value in body.items():
                if key in merged and str(merged[key]) != str(value):
                    raise ParameterConflict(f"parameter {key} differs between query string and body")
                merged[key] = value
    for key, value in merged.items():
        if isinstance(value, str) and not _storable(value):
            # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: refuse them here.
            raise ValidationFailed(f"invalid parameters: {key}", errors=[
                {"loc": key, "msg": "contains a NUL or an unpaired surrogate character", "type": "string_unstorable"}])
    return merged


class _RepeatedKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object with a key given twice is refused: parsers disagree on which value wins (a
    proxy or fraud check reading the first could approve what walletd, reading the last, moves)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return found


# parse_float=Decimal keeps JSON numbers exact; amounts never pass through float. One decoder for
# every request: json.loads with arguments builds a decoder per call, and each build leaves
# strings behind in the interpreter's type cache that pin the heap's pages after a burst.
_BODY_DECODER = json.JSONDecoder(parse_float=Decimal, object_pairs_hook=_unique_keys)


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate(model: type[BaseModel], raw: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        found = exc.errors(include_url=False, include_input=False, include_context=True)
        problems = [
            {"loc": ".".join(str(part) for part in err["loc"]) or "body", "msg": err["msg"], "type": err["type"]}
            for err in found
        ]
        # Told apart by the error type schemas.Amount raises, never by message text.
        legs = next((err for err in found if err["type"] == errors.LegsRefused.code), None)
        if legs is not None:  # book_schemas: malformed legs of a multi-leg transfer, each by index
            raise errors.legs_refused(legs["ctx"]["legs"]) from None
        amount = next((err for err in found if err["type"] == errors.InvalidAmount.code), None)
        if amount is not None:
            raise errors.InvalidAmount(amount["ctx"]["reason"], errors=problems) from None
        fields = ", ".join(p["loc"] for p in problems)
        raise ValidationFailed(f"invalid parameters: {fields}", errors=problems) from None
