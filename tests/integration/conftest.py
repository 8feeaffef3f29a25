from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import SSHD, BrokerProcess, SshdDevice

pytestmark = pytest.mark.integration

if not Path(SSHD).exists() or shutil.which("ssh") is None:
    pytest.exit("integration tests need OpenSSH (sshd and ssh): run 'make test', which installs"
                " them", returncode=3)


@pytest.fixture(scope="module")
def sshd_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdDevice]:
    device = SshdDevice(tmp_path_factory.mktemp("sshd")).start()
    yield device
    device.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.add_approver()
    proc.serve()
    yield proc
    proc.stop()
