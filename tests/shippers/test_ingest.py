"""Pure helpers of the ingest path."""

import uuid

from app.shippers.ingest import new_event_ids


def test_event_ids_are_distinct_version_4_uuids_in_canonical_text() -> None:
    ids = new_event_ids(2_000)
    assert len(set(ids)) == 2_000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    assert new_event_ids(0) == []
