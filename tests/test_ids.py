"""Random identifiers."""

import uuid

from app.ids import new_uuids


def test_event_ids_are_distinct_version_4_uuids_in_canonical_text() -> None:
    ids = new_uuids(2_000) + new_uuids(3)
    assert len(set(ids)) == 2_003
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    assert new_uuids(0) == []
