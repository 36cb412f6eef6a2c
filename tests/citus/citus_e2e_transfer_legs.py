"""tests/e2e/test_transfer_legs.py, run whole on Citus."""
from tests.e2e.test_transfer_legs import *  # noqa: F401,F403
