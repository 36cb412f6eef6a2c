"""tests/e2e/test_transfer.py on Citus. Two tests stay single-node: the one that writes postings
by hand to meet the statement trigger (on Citus the same guarantees live in the batch write:
citus_money.py refuses the same cases there) and the one that builds its own database."""
from tests.e2e.test_transfer import *  # noqa: F401,F403
from tests.e2e.test_transfer import (
    test_an_unbalanced_entry_is_refused_by_the_database,
    test_audit_names_a_corrupted_wallet,
)

del test_an_unbalanced_entry_is_refused_by_the_database, test_audit_names_a_corrupted_wallet
