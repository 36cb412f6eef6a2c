"""tests/e2e/test_history.py, run whole on Citus."""
from tests.e2e.test_history import *  # noqa: F401,F403
