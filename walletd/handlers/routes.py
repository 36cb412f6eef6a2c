"""Every route table of the API, in the order the OpenAPI document and the authority table list
them; the app factory mounts them."""

from __future__ import annotations

from walletd.handlers import (
    books,
    identity,
    money,
    operator,
    service,
    settlement,
    transfers,
    wallets,
    webhooks,
)

ROUTE_TABLES = (identity.routes, wallets.routes, books.routes, money.routes, transfers.routes, settlement.routes,
                service.routes, operator.routes, webhooks.routes)
