"""tests/e2e/test_journal_chain.py, run whole on Citus."""
from tests.e2e.test_journal_chain import *  # noqa: F401,F403
