"""tests/e2e/test_reversal.py on Citus, but for three tests: two whose own SQL is the single node's
(one counts reversal rows: a reversal between two users is stored once per side on Citus; one
writes a second reversal row without the owner column Citus needs), and one that builds its own
single-node database. citus_money.py checks the first two on Citus: concurrent reversals reverse
once, and the unique index refuses a second row."""
from tests.e2e.test_reversal import *  # noqa: F401,F403
from tests.e2e.test_reversal import (
    test_concurrent_reversals_from_two_walletd_instances_reverse_once,
    test_the_audit_names_a_reversal_that_no_longer_undoes_its_original,
    test_the_database_refuses_a_second_reversal_record,
)

del test_concurrent_reversals_from_two_walletd_instances_reverse_once, test_the_database_refuses_a_second_reversal_record
del test_the_audit_names_a_reversal_that_no_longer_undoes_its_original
