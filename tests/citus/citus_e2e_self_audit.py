"""tests/e2e/test_self_audit.py, run whole on Citus."""
import pytest

from tests.citus.conftest import create_citus_database
from tests.e2e.test_self_audit import *  # noqa: F401,F403


# The e2e module's own database_url (a single-node database) would win over the Citus conftest's.
@pytest.fixture
async def database_url(citus_cluster):
    return await create_citus_database(citus_cluster)
