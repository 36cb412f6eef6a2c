"""Typed application state: every AppKey and RequestKey of the app, in one place. The composition
root (app.py, resources.py) sets them; the handlers read them. Nothing below the handlers reads
app state: what a lower layer needs is passed to it."""

from __future__ import annotations

from aiohttp import ClientSession, web

from walletd.actors.registry import ActorRegistry
from walletd.auth.passwords import PasswordPool
from walletd.auth.throttle import LoginThrottle
from walletd.auth.tokens import TokenIssuer
from walletd.config import Settings
from walletd.jobs.request_load import RequestLoad
from walletd.jobs.webhook_delivery import WebhookDispatcher
from walletd.keys import ServerKeys
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.db import FairPool
from walletd.persistence.ledger import PgLedger
from walletd.webhooks.targets import TargetPolicy

settings_key = web.AppKey("settings", Settings)
pool_key = web.AppKey("pool", FairPool)
history_pool_key = web.AppKey("history_pool", FairPool)  # pool_key unless WALLETD_READ_DATABASE_URL is set
ledger_key = web.AppKey("ledger", PgLedger)
registry_key = web.AppKey("registry", ActorRegistry)
tokens_key = web.AppKey("tokens", TokenIssuer)
keys_key = web.AppKey("keys", ServerKeys)  # everything derived from WALLETD_SECRETS_KEY
targets_key = web.AppKey("webhook_targets", TargetPolicy)  # where a webhook may point
http_key = web.AppKey("http", ClientSession)
database_url_key = web.AppKey("database_url", str)
breaker_key = web.AppKey("database_breaker", DatabaseBreaker)  # this app's view of whether the database answers
passwords_key = web.AppKey("passwords", PasswordPool)
throttle_key = web.AppKey("login_throttle", LoginThrottle)
dispatcher_key = web.AppKey("webhook_dispatcher", WebhookDispatcher)
load_key = web.AppKey("request_load", RequestLoad)  # the requests in flight: background checks wait for none
openapi_key = web.AppKey("openapi", bytes)  # the OpenAPI document, rendered once

request_id_key = web.RequestKey("request_id", str)  # walletd's own, random: what the journal records
principal_key = web.RequestKey("principal", str)
challenge_key = web.RequestKey("auth_challenge", str)  # the WWW-Authenticate a 401 answers with
