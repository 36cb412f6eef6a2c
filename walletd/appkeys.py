"""Typed application state, shared by the composition root and the handlers."""

from __future__ import annotations

from aiohttp import ClientSession, web

from walletd.actors.registry import ActorRegistry
from walletd.auth.tokens import TokenIssuer
from walletd.config import Settings
from walletd.events.targets import TargetPolicy
from walletd.keys import ServerKeys
from walletd.persistence.db import FairPool
from walletd.persistence.ledger import PgLedger

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
request_id_key = web.RequestKey("request_id", str)  # walletd's own, random: what the journal records
principal_key = web.RequestKey("principal", str)
