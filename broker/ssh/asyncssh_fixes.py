"""Six changes to asyncssh (checked against 2.24.1), five on its packet path, installed once by
the server. Each keeps asyncssh's behaviour on the wire except where the text says otherwise.

1. **Receive window** (a memory bug). asyncssh re-opens a channel's window in
   ``SSHChannel._deliver_data`` by ``initial - current``. While the session has paused
   reading, arriving data waits in the channel's ``_recv_buf`` and is already off the window;
   when reading resumes, delivering the *first* buffered packet credits the peer with the
   whole window although the rest is still buffered. A relay pauses whenever the other side
   is slower, so each pause/resume cycle let the peer send one more window on top: with
   legacy ``scp -O`` of 1 GiB under uvloop the broker's peak RSS reached 946 MiB instead of a
   flat ~140 MiB. Here still-buffered bytes count as not yet consumed.

2. **Packet logging.** ``SSHPacketLogger.log_sent_packet``/``log_received_packet`` format a
   description of every packet and only then learn that packet logging (asyncssh debug
   level 3) is off: 6% of the relay's event loop on a download. They now return at once.

3. **One MSG_IGNORE per packet.** ``SSHConnection.send_packet`` sends an empty MSG_IGNORE
   before every encrypted packet: the countermeasure against the CBC-mode attacks of RFC 4251
   section 9.3.1, which doubles the packets (and ``send`` calls) of a bulk transfer. OpenSSH
   sends none with AEAD or CTR ciphers; neither does the broker now. With a CBC cipher (not in
   the broker's defaults, but allowed by ``[ssh] ciphers``) the countermeasure stays.

4. **Receive buffer.** ``SSHConnection`` keeps unparsed input as one ``bytes`` and re-slices
   it after every packet header and every packet: each 32 KiB packet of a 256 KiB read copied
   the rest of the read twice, about eight copies of every byte received. Input is now walked
   with an offset and only the unparsed tail is kept; an AES-GCM packet reaches the cipher as
   a view of the read, without a copy.

5. **AES-GCM copies.** The GCM shim builds a new ``AESGCM`` per packet, joins ciphertext and
   tag before decrypting and splits them again after encrypting, only for ``send_packet`` to
   join them once more. It now keeps one ``AESGCM`` per key and joins each packet once.

6. **No options rebuilt per login.** At a connection's first authentication request
   ``SSHServerConnection.reload_config`` builds all of the server's options anew, in a worker
   thread, to apply the ``Match`` blocks of its OpenSSH-style configuration files. The broker
   loads none: the rebuild changed nothing and cost every login a thread hand-over and a
   full option parse. It is now skipped unless configuration files were loaded.

4 and 5 together cut the bare relay's CPU per 200 MiB ``scp`` by 10-15% (0.78-0.93 s to
0.68-0.83 s, ``bench/relay.py``'s bare relay measured with ``/proc/PID/stat``).
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection, SSHServerConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import DisconnectError, ProtocolError
from asyncssh.packet import SSHPacketLogger, String, UInt32
from cryptography.exceptions import InvalidTag

from broker.errors import ConfigError
from broker.ssh import fastpath

PACKET_LOG_LEVEL = 3
_EMPTY_IGNORE = (String(b""),)
_installed = False


def window_credit(recv_window: int, buffered: int, initial: int) -> int:
    """Window to give back to the peer: all it has used up, once the data the session has not
    yet taken (``buffered``) plus the peer's remaining window is under half the initial one."""
    outstanding = recv_window + buffered
    return initial - outstanding if outstanding < initial / 2 else 0


def _deliver_data(self: Any, data: bytes, datatype: int | None) -> None:
    initial = self._init_recv_window
    # buffered data only matters once the window is under half: skip the sum until then
    buffered = 0 if self._recv_window >= initial / 2 else sum(
        len(item) for item, _ in self._recv_buf)
    credit = window_credit(self._recv_window, buffered, initial)
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


_log_sent_packet = SSHPacketLogger.log_sent_packet
_log_received_packet = SSHPacketLogger.log_received_packet


def _log_sent_if_logging(self: Any, *args: Any) -> None:
    if SSHLogger._debug_level >= PACKET_LOG_LEVEL:
        _log_sent_packet(self, *args)


def _log_received_if_logging(self: Any, *args: Any) -> None:
    if SSHLogger._debug_level >= PACKET_LOG_LEVEL:
        _log_received_packet(self, *args)


_send_packet = SSHConnection.send_packet


def _send_packet_without_padding_ignores(self: Any, pkttype: int, *args: bytes,
                                         handler: Any = None) -> None:
    if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE and not uses_cbc(self):
        return
    _send_packet(self, pkttype, *args, handler=handler)


def uses_cbc(conn: Any) -> bool:
    """Whether ``conn`` encrypts what it sends with a CBC-mode cipher."""
    algorithm: bytes = conn._enc_alg_cs if conn.is_client() else conn._enc_alg_sc
    return b"-cbc" in algorithm


_recv_pkthdr = SSHConnection._recv_pkthdr
_recv_packet = SSHConnection._recv_packet


def _data_received(self: Any, data: bytes, datatype: Any = None) -> None:
    """Take a read. A header or packet left incomplete by the last read is finished from
    the head of this one, and the rest is walked in place: only that one unit is copied,
    not the whole read."""
    data = bytes(data)  # data itself for bytes; handlers need bytes, never a view
    start = 0
    if self._inpbuf:
        rest = _rest_of_unit(self)
        if rest is None or rest >= len(data):
            self._inpbuf += data
            self._recv_data()
            return
        self._inpbuf += memoryview(data)[:rest]
        self._recv_data()
        if self._transport is None:
            return
        if self._inpbuf or _rest_of_unit(self) is None:  # paused: keep the rest for later
            self._inpbuf += memoryview(data)[rest:]
            return
        start = rest
    self._inpbuf = data
    self._recv_data(start)


def _rest_of_unit(self: Any) -> int | None:
    """How many more bytes the header or packet being received needs, or None when the
    connection is not between or inside packets (version exchange, a paused handler)."""
    step = getattr(self._recv_handler, "__func__", None)
    if step is _recv_pkthdr:
        need = self._recv_blocksize
    elif step is _recv_packet:
        need = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize
    else:
        return None
    rest: int = need - len(self._inpbuf)
    return rest if rest > 0 else None


def _recv_data(self: Any, start: int = 0) -> None:
    """asyncssh's ``_recv_data`` walking the input with an offset. The header and packet
    handlers are handed exactly the bytes they consume; any other handler (the version
    exchange, or the pause while a packet is processed asynchronously) sees all the rest.
    An AES-GCM packet is decrypted here, from the read itself when its header came in the
    same read, and channel data goes straight to its channel (:mod:`broker.ssh.fastpath`)."""
    self._reset_keepalive_timer()
    try:
        buf = self._inpbuf
        view = memoryview(buf)
        pos, end = start, len(buf)
        header_at: int | None = None  # where the current packet began, if in this buffer
        while pos < end:
            handler = self._recv_handler
            step = getattr(handler, "__func__", None)
            gcm = False
            if step is _recv_pkthdr:
                need = self._recv_blocksize
                header_at = pos
            elif step is _recv_packet:
                need = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize
                if need < 0:  # a length shorter than the header block it came in
                    raise ProtocolError("Invalid packet length")
                gcm = type(self._recv_encryption) is GCMEncryption
            else:
                self._inpbuf = buf[pos:] if pos else buf
                more = handler()
                if self._transport is None:
                    return
                buf = self._inpbuf
                view, pos, end, header_at = memoryview(buf), 0, len(buf), None
                if not more:
                    break
                continue
            if end - pos < need:
                break
            if gcm:
                more = _recv_gcm_packet(self, view, header_at, pos, need)
                pos += need
            else:
                self._inpbuf = buf[pos:pos + need]
                pos += need
                more = handler()
                pos -= len(self._inpbuf)  # whatever the handler left unconsumed
            if self._transport is None:
                return  # closed while handling the packet: the rest is dropped, as asyncssh does
            if not more:
                break
        self._inpbuf = bytes(view[pos:]) if pos < end else b""
    except DisconnectError as exc:
        self._send_disconnect(exc.code, exc.reason, exc.lang)
        self._force_close(exc)
    except Exception:
        self.internal_error()


def _recv_gcm_packet(self: Any, view: memoryview, header_at: int | None, pos: int,
                     need: int) -> bool:
    """Decrypt the packet whose header block ``_recv_pkthdr`` took and whose rest (tag
    included) is ``view[pos:pos + need]``; deliver it, or run asyncssh's ``_recv_packet``."""
    if header_at is not None:  # the whole packet is in this read: decrypt it in place
        plain = fastpath.open_gcm_packet(self, view[header_at + 4:pos + need],
                                         view[header_at:header_at + 4])
    else:
        first = self._packet
        plain = fastpath.open_gcm_packet(
            self, b"".join((first[4:], view[pos:pos + need])), first[:4])
    if fastpath.accept_channel_data(self, plain):
        self._packet = b""
        self._finish_recv_packet(MSG_CHANNEL_DATA, self._recv_seq)
        return True
    self._recv_encryption._broker_plain = bytes(plain)  # what _gcm_decrypt_packet returns
    self._inpbuf = view[pos:pos + need]
    more: bool = _recv_packet(self)
    return more


def _gcm_encrypt_packet(self: Any, seq: int, header: bytes, packet: bytes
                        ) -> tuple[bytes, bytes]:
    cipher = self._cipher
    sealed = fastpath.aead(cipher).encrypt(cipher._iv, packet, header)
    cipher._update_iv()
    return header + sealed, b""  # send_packet joins the two: the tag is already in place


def _gcm_decrypt_packet(self: Any, seq: int, first: bytes, rest: bytes | memoryview,
                        header_len: int, mac: bytes | memoryview) -> bytes | None:
    opened: bytes | None = self.__dict__.pop("_broker_plain", None)
    if opened is not None:  # decrypted already by _recv_gcm_packet
        return opened
    cipher = self._cipher
    try:
        plain: bytes | None = fastpath.aead(cipher).decrypt(
            cipher._iv, b"".join((first[header_len:], rest, mac)), first[:header_len])
    except InvalidTag:
        plain = None
    cipher._update_iv()
    return plain


#: The asyncssh releases whose private methods these changes were read against and tested
#: with. pyproject.toml pins the same version; requirements.lock pins it with its hash.
CHECKED_VERSIONS = ("2.24.1",)


_reload_config = SSHServerConnection.reload_config


async def _reload_config_if_configured(self: Any) -> None:
    if self._options.config.loaded:
        await _reload_config(self)


def check_version(version: str) -> None:
    """Refuse, in one line, to patch an asyncssh these changes were not checked against."""
    if version not in CHECKED_VERSIONS:
        raise ConfigError(
            f"asyncssh {version} is installed, but the broker's relay changes to asyncssh"
            f" were checked against {', '.join(CHECKED_VERSIONS)} only: install that"
            " (pip install -r requirements.lock) or re-check broker/ssh/asyncssh_fixes.py"
            " and broker/ssh/fastpath.py against the new version")


def install() -> None:
    """Apply the six changes (once per process), to a checked asyncssh only."""
    global _installed
    if _installed:
        return
    check_version(asyncssh.__version__)
    SSHChannel._deliver_data = _deliver_data  # type: ignore[method-assign]
    SSHPacketLogger.log_sent_packet = _log_sent_if_logging  # type: ignore[method-assign,assignment]
    SSHPacketLogger.log_received_packet = _log_received_if_logging  # type: ignore[method-assign,assignment]
    SSHConnection.send_packet = _send_packet_without_padding_ignores  # type: ignore[method-assign]
    SSHConnection.data_received = _data_received  # type: ignore[method-assign]
    SSHConnection._recv_data = _recv_data  # type: ignore[method-assign]
    GCMEncryption.encrypt_packet = _gcm_encrypt_packet  # type: ignore[method-assign]
    GCMEncryption.decrypt_packet = _gcm_decrypt_packet  # type: ignore[method-assign]
    SSHServerConnection.reload_config = _reload_config_if_configured  # type: ignore[method-assign]
    fastpath.install()
    _installed = True

