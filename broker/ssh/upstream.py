"""Logging in to devices with vaulted credentials. The technician never sees them."""

from __future__ import annotations

import asyncssh

from broker.errors import DeviceError
from broker.services.context import Context
from broker.services.sessions import DeviceLogin, device_login, pin_host_key

# Channel windows on both sides of the relay: OpenSSH's own 2 MiB. The relay holds up to a
# window in flight plus a window read ahead; at 2 MiB those bytes are still in the CPU's
# caches when they are hashed and sealed again, at 8 MiB they were not: a 200 MiB scp through
# the broker took 6-12% longer and 5-20% more CPU with 8 MiB (interleaved A/B rounds, both
# directions, legacy and SFTP scp). 2 MiB still carries 1 GB/s over a 2 ms round trip.
RELAY_WINDOW = 2 * 1024 * 1024
# The largest packet we accept: peers that allow it (OpenSSH does) send fewer, larger packets.
RELAY_PACKET = 256 * 1024
# AES-GCM first: one C call per packet, the cheapest cipher for a relay (ASYNCSSH-NOTES).
FAST_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr",
                "chacha20-poly1305@openssh.com"]


async def connect_device(ctx: Context, device_id: int,
                         timeout: float = 15.0) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the device, its host key pinned on first use."""
    return await connect_login(ctx, await device_login(ctx, device_id), timeout)


async def connect_login(ctx: Context, login: DeviceLogin,
                        timeout: float = 15.0) -> asyncssh.SSHClientConnection:
    """Log in to a device with ``login`` (the vaulted secret, or a rotation's new one)."""
    where = f"{login.host}:{login.port}"
    try:
        connection = await asyncssh.connect(
            login.host, login.port, username=login.user, known_hosts=_known_hosts(login),
            encryption_algs=FAST_CIPHERS, compression_algs=None, agent_path=None,
            window=RELAY_WINDOW, max_pktsize=RELAY_PACKET,
            agent_forwarding=False, connect_timeout=timeout, config=None,
            **_auth(login))
    except asyncssh.HostKeyNotVerifiable as exc:
        raise DeviceError(f"device {login.name} presented a host key that does not match the"
                          " pinned one (possible impersonation); refusing to connect",
                          f"{where}: {exc}") from None
    except asyncssh.PermissionDenied as exc:
        raise DeviceError(f"device {login.name} refused the broker's login",
                          f"{where} as {login.user}: {exc}") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        # the technician sees the device's broker name; its address goes to the audit row
        raise DeviceError(f"cannot reach device {login.name}",
                          f"{where}: {exc or type(exc).__name__}") from None
    if login.host_key is None:
        key = connection.get_server_host_key()
        if key is not None:
            await pin_host_key(ctx, login.device_id,
                               key.export_public_key().decode().strip())
    return connection


def _known_hosts(login: DeviceLogin) -> object:
    if login.host_key is None:
        return None  # first contact: trust on first use, then pin
    return ([asyncssh.import_public_key(login.host_key)], [], [])


def _auth(login: DeviceLogin) -> dict[str, object]:
    if login.kind == "password":
        return {"password": login.secret.decode(), "client_keys": None,
                "preferred_auth": ["password", "keyboard-interactive"],
                "kbdint_auth": True}
    key = asyncssh.import_private_key(login.secret)
    return {"client_keys": [key], "preferred_auth": ["publickey"], "password": None}
