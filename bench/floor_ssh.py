"""The floor for bench/opening.py: an asyncssh server that does nothing but SSH.

    .venv/bin/python bench/floor_ssh.py PORT HOST_KEY AUTHORIZED_KEY

It checks the client's key (one authorized public key) as the broker does, with the broker's
listener options and event loop (uvloop), and answers every exec channel itself with exit
status 0: no database, no policy, no recording and no device. No broker built on asyncssh can
open sessions faster than this on the same machine, so `opening.py --floor` runs it beside
sshd and the broker to say how much of the gap to sshd is the broker's and how much is
asyncssh's.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncssh
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from broker.ssh import asyncssh_fixes
from broker.ssh.upstream import RELAY_PACKET, RELAY_WINDOW


class OneKey(asyncssh.SSHServer):
    def __init__(self, authorized: asyncssh.SSHKey) -> None:
        self._authorized = authorized

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == self._authorized.public_data


async def answer(process: asyncssh.SSHServerProcess[bytes]) -> None:
    process.exit(0)


async def serve(port: int, host_key: str, authorized: asyncssh.SSHKey) -> None:
    await asyncssh.listen(
        "127.0.0.1", port, server_host_keys=[host_key],
        server_factory=lambda: OneKey(authorized), process_factory=answer, encoding=None,
        line_editor=False, agent_forwarding=False, allow_scp=False, x11_forwarding=False,
        compression_algs=None, encryption_algs=["aes128-gcm@openssh.com"],
        window=RELAY_WINDOW, max_pktsize=RELAY_PACKET, reuse_address=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    port, host_key, authorized_key = sys.argv[1:4]
    asyncssh_fixes.install()
    authorized = asyncssh.read_public_key(authorized_key)
    uvloop.run(serve(int(port), host_key, authorized))


if __name__ == "__main__":
    main()
