"""The payment service's subscriptions and event feed (delivery is walletd/jobs/webhook_delivery.py)."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import Annotated, Literal

import orjson
from aiohttp import web
from pydantic import Field
from yarl import URL

from walletd.appkeys import keys_key, pool_key, settings_key, targets_key
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.ids import new_id
from walletd.handlers.endpoint import Routes
from walletd.handlers.schemas import Model, Params, StatusOut, TxOut
from walletd.logs import get_logger
from walletd.persistence import outbox
from walletd.webhooks.targets import UnsafeUrl

routes = Routes()
log = get_logger("walletd.webhooks")

# *.expired: written by the previous release (time no longer ends a pending record); still in the feed.
EVENT_TYPES = ("deposit.requested", "deposit.settled", "deposit.rejected", "deposit.stale",
               "withdraw.requested", "withdraw.settled", "withdraw.rejected", "withdraw.stale",
               "settlement.conflict", "deposit.expired", "withdraw.expired")


class WebhookParams(Params):
    url: Annotated[str, Field(min_length=1, max_length=2048,
                              description="http or https to a public address: no credentials, fragment, whitespace, "
                                          "control characters or percent-encoded host; a host that is, or resolves "
                                          "to, a loopback, private, link-local, CGNAT, multicast, reserved or "
                                          "unspecified address is refused unless WALLETD_WEBHOOK_ALLOW_HOSTS names it",
                              examples=["https://pay.example.com/walletd-events"])]


class FeedParams(Params):
    after: uuid.UUID | None = Field(None, description="An event id (the last one seen): the page starts after it")
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class WebhookOut(Model):
    id: uuid.UUID
    url: str
    created_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="Signs every delivery (Walletd-Signature). Shown only in this answer.")


class WebhookRotatedOut(WebhookCreatedOut):
    previous_secret_expires_at: datetime | None = Field(
        description="Until then every delivery is signed with the new secret and the one it replaced (two `v1=` in "
                    "Walletd-Signature); null when WALLETD_WEBHOOK_ROTATION_OVERLAP is 0")


class WebhookListOut(Model):
    webhooks: list[WebhookOut]


class ConflictOut(Model):
    refused_status: Literal["paid", "rejected"] = Field(description="What the payment service asked for")
    status: str = Field(description="The record's status, decided before")
    settled_by: Literal["operator", "expiry"] = Field(description="Who decided: the operator, or the previous "
                                                                  "release's expiry")


class EventOut(Model):
    id: uuid.UUID = Field(description="The same id as the delivery's Walletd-Event-Id header")
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    created_at: datetime
    data: TxOut = Field(description="The transaction record as the API returns it, at the time of the event")
    conflict: ConflictOut | None = Field(None, description="settlement.conflict only: the payment service's "
                                                           "settlement refused, for a person to reconcile")


class EventsOut(Model):
    events: list[EventOut]
    next_cursor: str | None = Field(description="Pass as `after` for the next page: the last event's id, or the "
                                                "`after` given when nothing newer is listed yet (null: no events)")


async def checked_url(request: web.Request, raw: str) -> str:
    try:
        url = await request.app[targets_key].vet(raw)
    except UnsafeUrl as exc:
        raise errors.InvalidWebhookUrl(str(exc)) from None
    return str(url)


def _loggable(url: str) -> str:
    """Scheme, host, port and path: a query string may carry a token of the receiver's."""
    return str(URL(url).with_query(None))


@routes("POST", "/service/webhooks", summary="Register a webhook endpoint",
        description="Every event of the caller (deposit.requested|settled|rejected|stale, withdraw.…, "
                    "settlement.conflict) is POSTed "
                    "to the endpoint, signed with the secret returned here (shown once). At most 16 endpoints.",
        auth="service", params=WebhookParams, response=WebhookCreatedOut, tags=["events"],
        errors=[errors.InvalidWebhookUrl, errors.TooManyWebhooks])
async def create_webhook(request: web.Request, principal: Principal, params: WebhookParams):
    url = await checked_url(request, params.url)
    secret = new_secret()
    row = await outbox.create_endpoint(request.app[pool_key], new_id(), principal.user_id, url,
                                       request.app[keys_key].encrypt(secret))
    if row is None:
        raise errors.TooManyWebhooks(f"too many webhook endpoints (at most {outbox.MAX_ENDPOINTS})")
    log.info("webhook.created", webhook_id=str(row["id"]), url=_loggable(url), principal=str(principal.user_id))
    return WebhookCreatedOut(**row, secret=secret)


@routes("GET", "/service/webhooks", summary="The caller's webhook endpoints (secrets are not shown again)",
        auth="service", response=WebhookListOut, tags=["events"])
async def list_webhooks(request: web.Request, principal: Principal):
    rows = await outbox.list_endpoints(request.app[pool_key], principal.user_id)
    return WebhookListOut(webhooks=[WebhookOut(**r) for r in rows])


_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
             "description": "The webhook endpoint's id"}


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _webhook_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise errors.WebhookNotFound() from None


@routes("POST", "/service/webhooks/{id}/rotate", summary="Replace a webhook endpoint's secret",
        description="Returns the new secret (shown once). For WALLETD_WEBHOOK_ROTATION_OVERLAP seconds (default 24 h) "
                    "every delivery carries two signatures, `v1=` under the new secret and `v1=` under the old one, "
                    "so the receiver can switch to the new secret without refusing a delivery.",
        auth="service", response=WebhookRotatedOut, tags=["events"], extra_headers=[_ID_PARAM],
        errors=[errors.WebhookNotFound])
async def rotate_webhook_secret(request: web.Request, principal: Principal):
    webhook_id = _webhook_id(request)
    secret = new_secret()
    overlap = request.app[settings_key].webhook_rotation_overlap_seconds
    row = await outbox.rotate_secret(request.app[pool_key], webhook_id, principal.user_id,
                                     request.app[keys_key].encrypt(secret), overlap)
    if row is None:
        raise errors.WebhookNotFound()
    log.info("webhook.rotated", webhook_id=str(webhook_id), principal=str(principal.user_id),
             previous_valid_until=row["previous_secret_until"])
    return WebhookRotatedOut(id=row["id"], url=row["url"], created_at=row["created_at"], secret=secret,
                             previous_secret_expires_at=row["previous_secret_until"])


@routes("DELETE", "/service/webhooks/{id}", summary="Remove a webhook endpoint",
        description="Its undelivered deliveries are dropped; the events stay in the feed.",
        auth="service", response=StatusOut, tags=["events"], extra_headers=[_ID_PARAM],
        errors=[errors.WebhookNotFound])
async def delete_webhook(request: web.Request, principal: Principal):
    webhook_id = _webhook_id(request)
    url = await outbox.delete_endpoint(request.app[pool_key], webhook_id, principal.user_id)
    if url is None:
        raise errors.WebhookNotFound()
    log.info("webhook.deleted", webhook_id=str(webhook_id), url=_loggable(url), principal=str(principal.user_id))
    return StatusOut(status="success", message="webhook deleted")


@routes("GET", "/service/events", summary="The caller's events, oldest first (keyset pagination)",
        description="The events delivered to the webhooks, with the same ids, in the order their transactions "
                    "committed. A page only includes events whose transaction is older than every transaction "
                    "still running, so following `next_cursor` never skips one that commits late.",
        auth="service", params=FeedParams, response=EventsOut, tags=["events"],
        errors=[errors.UnknownEventCursor])
async def list_events(request: web.Request, principal: Principal, params: FeedParams):
    try:
        rows = await outbox.feed(request.app[pool_key], principal.user_id, params.after, params.limit)
    except outbox.UnknownCursor:
        raise errors.UnknownEventCursor() from None
    # The stored event text, byte for byte as delivered.
    cursor = orjson.dumps(str(rows[-1][0]) if rows else (str(params.after) if params.after else None))
    body = b'{"events":[' + ",".join(text for _, text in rows).encode() + b'],"next_cursor":' + cursor + b"}"
    return web.Response(body=body, content_type="application/json")
