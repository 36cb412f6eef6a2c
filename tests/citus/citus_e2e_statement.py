"""tests/e2e/test_statement.py, run whole on Citus."""
from tests.e2e.test_statement import *  # noqa: F401,F403
