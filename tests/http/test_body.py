import gzip

import pytest

from app.http.body import gunzip
from app.core import Refusal


def test_gunzip_within_the_limit() -> None:
    assert gunzip(gzip.compress(b"x" * 1000), 1000) == b"x" * 1000


def test_gunzip_refuses_a_body_that_inflates_past_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(Refusal) as info:
        gunzip(bomb, 1_000_000)
    assert info.value.status == 413


@pytest.mark.parametrize("body", [b"not gzip", gzip.compress(b"x" * 100)[:-12]])
def test_gunzip_refuses_malformed_streams(body: bytes) -> None:
    with pytest.raises(Refusal) as info:
        gunzip(body, 1000)
    assert info.value.status == 400
