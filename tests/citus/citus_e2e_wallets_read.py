"""tests/e2e/test_wallets_read.py on Citus, but for the test that moves a balance by writing postings
by hand (the single-node statement trigger applies them; on Citus the batch write does, see
citus_money.py)."""
from tests.e2e.test_wallets_read import *  # noqa: F401,F403
from tests.e2e.test_wallets_read import test_wallets_show_a_balance_change

del test_wallets_show_a_balance_change
