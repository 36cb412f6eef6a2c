"""tests/e2e/test_service_wallets.py, run whole on Citus."""
from tests.e2e.test_service_wallets import *  # noqa: F401,F403
