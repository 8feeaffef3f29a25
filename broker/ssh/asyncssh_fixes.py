"""Three changes to asyncssh's packet path (checked against 2.24.1), installed once by the
server. Each keeps asyncssh's behaviour on the wire except where the text says otherwise.

1. **Receive window** (a memory bug). asyncssh re-opens a channel's window in
   ``SSHChannel._deliver_data`` by ``initial - current``. While the session has paused
   reading, arriving data waits in the channel's ``_recv_buf`` and is already off the window;
   when reading resumes, delivering the *first* buffered packet credits the peer with the
   whole window although the rest is still buffered. A relay pauses whenever the other side
   is slower, so each pause/resume cycle let the peer send one more window on top: with
   legacy ``scp -O`` of 1 GiB under uvloop the broker's peak RSS reached 946 MiB instead of a
   flat ~140 MiB. Here still-buffered bytes count as not yet consumed.

2. **Packet logging.** ``SSHPacketLogger._log_packet`` formats a description of every packet
   sent and received and only then learns that packet logging (asyncssh debug level 3) is
   off: 6% of the relay's event loop on a download. It now returns at once when it is off.

3. **One MSG_IGNORE per packet.** ``SSHConnection.send_packet`` sends an empty MSG_IGNORE
   before every encrypted packet: the countermeasure against the CBC-mode attacks of RFC 4251
   section 9.3.1, which doubles the packets (and ``send`` calls) of a bulk transfer. OpenSSH
   sends none with AEAD or CTR ciphers; neither does the broker now. With a CBC cipher (not in
   the broker's defaults, but allowed by ``[ssh] ciphers``) the countermeasure stays.
"""

from __future__ import annotations

from typing import Any

from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
from asyncssh.logging import SSHLogger
from asyncssh.misc import ProtocolError
from asyncssh.packet import SSHPacketLogger, String, UInt32

PACKET_LOG_LEVEL = 3
_EMPTY_IGNORE = (String(b""),)
_installed = False


def window_credit(recv_window: int, buffered: int, initial: int) -> int:
    """Window to give back to the peer: all it has used up, once the data the session has not
    yet taken (``buffered``) plus the peer's remaining window is under half the initial one."""
    outstanding = recv_window + buffered
    return initial - outstanding if outstanding < initial / 2 else 0


def _deliver_data(self: Any, data: bytes, datatype: int | None) -> None:
    credit = window_credit(self._recv_window, sum(len(item) for item, _ in self._recv_buf),
                           self._init_recv_window)
    if credit:
        self.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(credit))
        self._recv_window += credit
    if self._encoding:
        try:
            decoded = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise ProtocolError(str(exc)) from None
    else:
        decoded = data
    if self._session is not None:
        self._session.data_received(decoded, datatype)


_log_packet = SSHPacketLogger._log_packet


def _log_packet_if_logging(self: Any, *args: Any) -> None:
    if SSHLogger._debug_level >= PACKET_LOG_LEVEL:
        _log_packet(self, *args)


_send_packet = SSHConnection.send_packet


def _send_packet_without_padding_ignores(self: Any, pkttype: int, *args: bytes,
                                         handler: Any = None) -> None:
    if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE and not uses_cbc(self):
        return
    _send_packet(self, pkttype, *args, handler=handler)


def uses_cbc(conn: Any) -> bool:
    """Whether ``conn`` encrypts what it sends with a CBC-mode cipher."""
    algorithm: bytes = conn._enc_alg_cs if conn.is_client() else conn._enc_alg_sc
    return algorithm.endswith(b"-cbc") or b"-cbc@" in algorithm


def install() -> None:
    """Apply the three changes (once per process)."""
    global _installed
    if _installed:
        return
    SSHChannel._deliver_data = _deliver_data  # type: ignore[method-assign]
    SSHPacketLogger._log_packet = _log_packet_if_logging  # type: ignore[method-assign,assignment]
    SSHConnection.send_packet = _send_packet_without_padding_ignores  # type: ignore[method-assign]
    _installed = True
