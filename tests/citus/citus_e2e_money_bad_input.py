"""tests/e2e/test_money_bad_input.py, run whole on Citus."""
from tests.e2e.test_money_bad_input import *  # noqa: F401,F403
