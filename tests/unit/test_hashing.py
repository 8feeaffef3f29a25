"""Background SHA-256 gives exactly hashlib's digest, whatever the update sizes."""

from __future__ import annotations

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.recording.hashing import BATCH, BackgroundSHA256


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * BATCH), max_size=8))
def test_matches_hashlib_for_any_split(sizes: list[int]) -> None:
    data = os.urandom(sum(sizes))
    background, reference = BackgroundSHA256(), hashlib.sha256()
    offset = 0
    for size in sizes:
        background.update(memoryview(data)[offset:offset + size])
        offset += size
    reference.update(data)
    assert background.hexdigest() == reference.hexdigest()


def test_empty_and_repeated_digest() -> None:
    empty = BackgroundSHA256()
    assert empty.hexdigest() == hashlib.sha256().hexdigest()
    many = BackgroundSHA256()
    many.update(b"x" * (5 * BATCH + 17))
    expected = hashlib.sha256(b"x" * (5 * BATCH + 17)).hexdigest()
    assert many.hexdigest() == expected
    assert many.hexdigest() == expected
