"""tests/e2e/test_self_audit.py, run whole on Citus."""
from tests.e2e.test_self_audit import *  # noqa: F401,F403
