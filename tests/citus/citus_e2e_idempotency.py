"""tests/e2e/test_idempotency.py, run whole on Citus."""
from tests.e2e.test_idempotency import *  # noqa: F401,F403
