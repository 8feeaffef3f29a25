"""The reference point for bench/relay.py: a bare asyncssh relay with no recording, no
database and no policy, as the issue's "bare asyncssh relay" figure describes.

    .venv/bin/python bench/bare_relay.py PORT HOST_KEY DEVICE_PORT DEVICE_USER DEVICE_KEY

Accepts any client key, opens one upstream connection per client (AES-GCM, the broker's
windows and packet size) and pumps exec channels and the sftp subsystem both ways, as the
broker does. It applies the broker's asyncssh fixes so the two differ only by what the
product adds.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from broker.ssh import asyncssh_fixes
from broker.ssh.process import RelayProcess
from broker.ssh.streams import SSHReceive, SSHSend, SSHSendNoEOF, pump
from broker.ssh.upstream import FAST_CIPHERS, RELAY_PACKET, RELAY_WINDOW


class AnyKey(asyncssh.SSHServer):
    def __init__(self, relay: Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]]):
        self._relay = relay

    def session_requested(self) -> RelayProcess:
        return RelayProcess(self._relay)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True


def main() -> None:
    port, host_key, device_port, device_user, device_key = sys.argv[1:6]
    asyncssh_fixes.install()

    async def relay(process: asyncssh.SSHServerProcess[bytes]) -> None:
        async with asyncssh.connect(
                "127.0.0.1", int(device_port), username=device_user, known_hosts=None,
                client_keys=[device_key], encryption_algs=FAST_CIPHERS, compression_algs=None,
                window=RELAY_WINDOW, max_pktsize=RELAY_PACKET, config=None,
                agent_path=None) as upstream:
            if process.subsystem:
                up = await upstream.create_process(subsystem=process.subsystem, encoding=None)
            else:
                up = await upstream.create_process(process.command, encoding=None)
            inbound = asyncio.ensure_future(pump(SSHReceive(process.stdin), SSHSend(up.stdin)))
            await asyncio.gather(pump(SSHReceive(up.stdout), SSHSendNoEOF(process.stdout)),
                                 pump(SSHReceive(up.stderr), SSHSendNoEOF(process.stderr)))
            await up.wait_closed()
            inbound.cancel()
            process.exit(up.exit_status or 0)

    async def serve() -> None:
        await asyncssh.listen(
            "127.0.0.1", int(port), server_host_keys=[host_key],
            server_factory=lambda: AnyKey(relay), encoding=None, line_editor=False, allow_scp=False,
            agent_forwarding=False, compression_algs=None,
            encryption_algs=["aes128-gcm@openssh.com"], window=RELAY_WINDOW,
            max_pktsize=RELAY_PACKET)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
