"""tests/e2e/test_balance_at.py on Citus, but for the property test: its oracle replays the journal
with a join of postings and entries off the distribution column for every instant of every
example, which Citus runs by repartitioning both tables (seconds each). citus_money.py checks
balances at instants against the postings of a wallet on one worker. And but for the audit test
that builds a single-node database of its own (it would run under this name without Citus)."""
from tests.e2e.test_balance_at import *  # noqa: F401,F403
from tests.e2e.test_balance_at import (
    test_audit_names_a_posting_dated_apart_from_its_entry_or_naming_no_record,
    test_balance_at_any_instant_equals_replaying_the_journal,
)

del test_balance_at_any_instant_equals_replaying_the_journal
del test_audit_names_a_posting_dated_apart_from_its_entry_or_naming_no_record
