"""tests/e2e/test_withdraw.py, run whole on Citus."""
from tests.e2e.test_withdraw import *  # noqa: F401,F403
