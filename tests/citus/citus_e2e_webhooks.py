"""tests/e2e/test_webhooks.py on Citus (the outbox stays on the coordinator), but for the test of a
delivery given up past a 1 s horizon: its dispatcher also gives up any delivery the module's other
tests left pending in the shared database, which on the slower cluster there often are, and it
counts them too. The single-node suite keeps it."""
from tests.e2e.test_webhooks import *  # noqa: F401,F403
from tests.e2e.test_webhooks import test_a_delivery_past_the_horizon_is_given_up

del test_a_delivery_past_the_horizon_is_given_up
