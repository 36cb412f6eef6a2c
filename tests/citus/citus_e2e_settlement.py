"""tests/e2e/test_settlement.py, run whole on Citus."""
from tests.e2e.test_settlement import *  # noqa: F401,F403
