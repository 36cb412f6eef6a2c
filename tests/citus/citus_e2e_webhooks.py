"""tests/e2e/test_webhooks.py, run whole on Citus: the outbox stays on the coordinator."""
from tests.e2e.test_webhooks import *  # noqa: F401,F403
