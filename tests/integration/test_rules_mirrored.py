"""The database enforces some of the domain's rules on its own, whoever writes (constraints and
column defaults of released migrations, which are never edited). Each is decided in walletd/domain/
and mirrored there: these tests read the live schema and fail when the two say different things."""

from __future__ import annotations

import re
from decimal import Decimal

from walletd.domain.policy import DEFAULT_COMMISSION, WALLET_KINDS
from walletd.domain.vocabulary import MAY_GO_NEGATIVE, Bucket, WalletKind


async def _check(db, table: str, constraint: str) -> str:
    found = await db.fetchval(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "WHERE t.relname = $1 AND c.conname = $2", table, constraint)
    assert found is not None, f"{table} has no constraint {constraint}"
    return found


def _quoted(definition: str) -> set[str]:
    return set(re.findall(r"'([^']*)'", definition))


async def test_the_kinds_that_may_go_negative_are_the_checks(db):
    definition = await _check(db, "wallets", "balance_not_negative")
    assert _quoted(definition) == set(MAY_GO_NEGATIVE), definition
    assert "balance >=" in definition


async def test_wallet_kinds_buckets_and_roles_are_the_stored_words(db):
    assert _quoted(await _check(db, "wallets", "wallets_kind_check")) == set(WalletKind)
    assert _quoted(await _check(db, "postings", "postings_bucket_check")) == set(Bucket)
    roles = _quoted(await _check(db, "users", "users_role_check"))
    assert roles == set(WALLET_KINDS) | {"operator"}


async def test_the_commission_column_defaults_are_the_policy_s(db):
    defaults = dict(await db.fetch(
        "SELECT column_name, column_default FROM information_schema.columns "
        "WHERE table_name = 'commission_rates' AND column_name IN ('deposit_rate', 'withdraw_rate')"))
    assert Decimal(defaults["deposit_rate"]) == DEFAULT_COMMISSION.deposit
    assert Decimal(defaults["withdraw_rate"]) == DEFAULT_COMMISSION.withdraw
