"""Fixtures the attack suites share: a real sshd device per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import SshdDevice


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdDevice]:
    dev = SshdDevice(tmp_path_factory.mktemp("sshd")).start()
    yield dev
    dev.stop()
