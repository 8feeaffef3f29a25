"""A fast path for channel data over AES-GCM (checked against asyncssh 2.24.1).

asyncssh sends a 32 KiB data packet through six Python layers that each build a new
``bytes`` (``write`` copies into a ``bytearray``, then ``String``, the channel number, the
message type and the padding are each concatenated on), and receives one by slicing it
three more times. A relay moves every byte both ways, so these copies and calls were the
largest cost after SHA-256. Here, while nothing unusual is going on, data is sealed
and opened directly:

* **Send.** ``SSHChannel.write`` keeps a view of the caller's ``bytes``; the flush seals each
  packet from one join of header, data and padding, and hands the transport all the packets
  of one flush in a single write.
* **Receive.** A GCM packet is decrypted from a view of the read (no join) into a plaintext
  buffer the connection reuses, and channel data goes straight to the channel's
  ``_accept_data`` as one copy out of it.

Anything else takes asyncssh's own path, unchanged: another cipher, compression, packet
logging (asyncssh debug level 3), a key exchange in progress or due (the byte and time
limits are checked before every packet, as asyncssh does), a packet before authentication,
any other message, and every packet that would be an error (unknown channel, window
exceeded, malformed length), so that asyncssh raises its own error for it.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from asyncssh.channel import SSHChannel, _data_type_names
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_EOF, MSG_CHANNEL_EXTENDED_DATA
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import MACError
from asyncssh.packet import String, UInt32
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PACKET_LOG_LEVEL = 3
DATA_LOG_LEVEL = 2
_DATA_HEAD = struct.Struct(">BBII")  # padding length, message type, channel, data length
_EXT_HEAD = struct.Struct(">BBIII")  # ... channel, data type, data length
_DATA_PREFIX = 1 + 4 + 4  # message type, channel, data length: the payload before the data
_TAG = 16


def aead(cipher: Any) -> AESGCM:
    """One ``AESGCM`` per key, kept on asyncssh's cipher object."""
    sealer: AESGCM | None = cipher.__dict__.get("_broker_aead")
    if sealer is None:
        sealer = cipher._broker_aead = AESGCM(cipher._key)
    return sealer


# -- send ----------------------------------------------------------------------------------

def _can_seal(conn: Any) -> bool:
    """Whether a data packet may skip ``SSHConnection.send_packet``: the exact conditions
    under which that method would send it at once, unlogged, uncompressed, with AES-GCM."""
    return (type(conn._send_encryption) is GCMEncryption and conn._kex_complete
            and conn._auth_complete and conn._compressor is None
            and conn._transport is not None
            and SSHLogger._debug_level < PACKET_LOG_LEVEL
            and conn._rekey_bytes_sent < conn._rekey_bytes
            and not (conn._rekey_seconds and time.monotonic() >= conn._rekey_time))


def _seal(conn: Any, chan: int, datatype: int | None, data: memoryview) -> list[bytes]:
    """The wire bytes of one data packet, as asyncssh's ``send_packet`` would build them."""
    size = len(data)
    payload = _DATA_PREFIX + size + (4 if datatype is not None else 0)
    blocksize = conn._send_blocksize
    padlen = -(conn._send_enchdrlen + payload) % blocksize
    if padlen < 4:
        padlen += blocksize
    head = (_DATA_HEAD.pack(padlen, MSG_CHANNEL_DATA, chan, size) if datatype is None
            else _EXT_HEAD.pack(padlen, MSG_CHANNEL_EXTENDED_DATA, chan, datatype, size))
    plain = b"".join((head, data, os.urandom(padlen)))
    header = len(plain).to_bytes(4, "big")
    cipher = conn._send_encryption._cipher
    sealed = aead(cipher).encrypt(cipher._iv, plain, header)
    cipher._update_iv()
    conn._send_seq = (conn._send_seq + 1) & 0xffffffff
    conn._rekey_bytes_sent += len(plain)
    return [header, sealed]


def _write(self: Any, data: Any, datatype: int | None = None) -> None:
    """``SSHChannel.write``, queueing a view of the data instead of a copy."""
    if self._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    if datatype is not None and datatype not in self._write_datatypes:
        raise OSError("Invalid extended data type")
    if not data:
        return
    if self._encoding:
        data = self._encoder.encode(data)
    # a view of immutable bytes needs no copy; anything mutable is copied once, as before
    view = memoryview(data if type(data) is bytes else bytes(data))
    if SSHLogger._debug_level >= DATA_LOG_LEVEL:
        self.logger.debug2("Sending %d data byte%s%s", len(view), "s" if len(view) > 1 else "",
                           f" to {_data_type_names[datatype]}" if datatype else "")
    self._send_buf.append((view, datatype))
    self._send_buf_len += len(view)
    self._flush_send_buf()


def _flush_send_buf(self: Any) -> None:
    """``SSHChannel._flush_send_buf``, sealing what it can and writing it at once."""
    conn = self._conn
    wire: list[bytes] = []
    while self._send_buf and self._send_window:
        pktsize = min(self._send_window, self._send_pktsize)
        buf, datatype = self._send_buf[0]
        if len(buf) > pktsize:
            data = buf[:pktsize]
            self._send_buf[0] = (buf[pktsize:], datatype)
        else:
            data = buf
            del self._send_buf[0]
        self._send_buf_len -= len(data)
        self._send_window -= len(data)
        if conn is not None and self._send_chan is not None and _can_seal(conn):
            wire += _seal(conn, self._send_chan, datatype, data)
            continue
        if wire:  # what is sealed goes first: sequence numbers are in sealing order
            conn._send(b"".join(wire))
            wire = []
        if datatype is None:
            self.send_packet(MSG_CHANNEL_DATA, String(bytes(data)))
        else:
            self.send_packet(MSG_CHANNEL_EXTENDED_DATA, UInt32(datatype), String(bytes(data)))
    if wire:
        conn._send(b"".join(wire))
    self._pause_resume_writing()
    if not self._send_buf:
        if self._send_state == "eof_pending":
            self.send_packet(MSG_CHANNEL_EOF)
            self._send_state = "eof"
        elif self._send_state == "close_pending":
            self._close_send()


# -- receive -------------------------------------------------------------------------------

def open_gcm_packet(conn: Any, ciphertext: bytes | memoryview, header: bytes | memoryview
                    ) -> memoryview:
    """Decrypt one GCM packet (``ciphertext`` ends with the tag) into the connection's
    plaintext buffer, which the next packet reuses: callers copy out what they keep. A bad
    tag is a MACError, the error asyncssh raises for it."""
    size = len(ciphertext) - _TAG  # never negative: the length check keeps the tag whole
    buffer: bytearray | None = conn.__dict__.get("_broker_plain_buffer")
    if buffer is None or len(buffer) < size:
        buffer = conn._broker_plain_buffer = bytearray(size)
    plain = memoryview(buffer)[:size]
    cipher = conn._recv_encryption._cipher
    try:
        aead(cipher).decrypt_into(cipher._iv, ciphertext, header, plain)
    except InvalidTag:
        raise MACError("MAC verification failed") from None
    cipher._update_iv()
    return plain


def accept_channel_data(conn: Any, plain: memoryview) -> bool:
    """Hand a decrypted packet's channel data to its channel, if it is a well-formed
    ``MSG_CHANNEL_DATA`` the fast path may take; False leaves it to asyncssh."""
    if (len(plain) < 1 + _DATA_PREFIX or plain[1] != MSG_CHANNEL_DATA
            or not conn._auth_complete or conn._decompressor is not None
            or SSHLogger._debug_level >= DATA_LOG_LEVEL):
        return False
    _padlen, _type, chan_id, size = _DATA_HEAD.unpack_from(plain)
    channel = conn._channels.get(chan_id)
    if (channel is None or 1 + _DATA_PREFIX + size + plain[0] != len(plain)
            or channel._recv_state != "open" or size > channel._recv_window):
        return False
    channel._accept_data(bytes(plain[1 + _DATA_PREFIX:1 + _DATA_PREFIX + size]))
    return True


def install() -> None:
    """Install the send half; asyncssh_fixes' input walk calls the receive half."""
    SSHChannel.write = _write  # type: ignore[method-assign]
    SSHChannel._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]
