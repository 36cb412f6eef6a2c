import time
import uuid

from walletd.domain.ids import new_id


def test_new_ids_are_version_7_rfc_variant_unique_and_time_ordered():
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert isinstance(value, uuid.UUID)
        assert value.version == 7 and value.variant == uuid.RFC_4122
        assert before <= value.int >> 80 <= after
    stamps = [value.int >> 80 for value in ids]
    assert stamps == sorted(stamps)


def test_random_bits_differ_within_one_millisecond():
    a, b = new_id(), new_id()
    assert (a.int & ((1 << 74) - 1)) != (b.int & ((1 << 74) - 1))
