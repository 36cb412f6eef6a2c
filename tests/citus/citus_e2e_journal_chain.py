"""tests/e2e/test_journal_chain.py on Citus, but for its tampering tests (below)."""
import pytest

from tests.citus.conftest import create_citus_database
from tests.e2e.test_journal_chain import *  # noqa: F401,F403


# The e2e module's own database_url (a single-node database) would win over the Citus conftest's.
@pytest.fixture
async def database_url(citus_cluster):
    return await create_citus_database(citus_cluster)


# Their tampering is single-node SQL that Citus refuses (the journal's append-only trigger on the
# shards, updates with column references to STABLE functions, joins off the distribution column,
# inserts without the owner column). On a cluster, tests/citus/citus_chain.py changes a record's copy.
del test_a_posting_moved_to_another_wallet_with_balances_fixed_is_named  # noqa: F821
del test_a_rewritten_seal_is_named  # noqa: F821
del test_a_deleted_entry_is_named  # noqa: F821
del test_expect_head_detects_a_truncated_tail  # noqa: F821
del test_a_deleted_entry_with_its_seal_is_named_by_the_gap  # noqa: F821
del test_an_inserted_entry_is_named  # noqa: F821
del test_a_segment_read_in_parts_names_what_one_read_names  # noqa: F821  (deletes postings and an entry)
