"""Shared by the SFTP and scp recorder tests: a password-only asyncssh device, client options,
log reading, and re-chunking of captured byte streams."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncssh

DEVICE_PASSWORD = "device-secret"
SSH_OPTIONS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR"]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def start_device(root: Path, sftp_version: int = 3) -> asyncssh.SSHAcceptor:
    """An asyncssh device with SFTP chrooted to ``root`` and legacy scp, password login."""

    class Device(asyncssh.SSHServer):
        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            return password == DEVICE_PASSWORD

    return await asyncssh.listen(
        "127.0.0.1", 0, server_factory=Device,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=os.fsencode(root)),
        allow_scp=True, sftp_version=sftp_version)


def rechunk(events: list[tuple[str, bytes]], rng: random.Random,
            steps: Sequence[int]) -> Iterator[tuple[str, bytes]]:
    """The same bytes per direction, in the same order, cut and merged at random places."""
    merged: list[tuple[str, bytearray]] = []
    for direction, chunk in events:
        if merged and merged[-1][0] == direction and rng.random() < 0.5:
            merged[-1][1].extend(chunk)
        else:
            merged.append((direction, bytearray(chunk)))
    for direction, chunk in merged:
        pos = 0
        while pos < len(chunk):
            step = rng.choice(steps)
            yield direction, bytes(chunk[pos:pos + step])
            pos += step
