"""What the SFTP recorder keeps per open handle: a file's bytes each way, hashed in file-offset
order however the replies arrive, or a directory listing's entry count."""

from __future__ import annotations

import hashlib
import heapq

from .sftp_wire import _ACCESS_READ, _ACCESS_WRITE


class _OrderedHash:
    """SHA-256 of chunks given by file offset, in offset order, whatever order they come in.

    Hashed inline on the event loop, as the scp recorder does. A worker thread was measured
    against this (bench/relay.py's routes, 2 cores, three interleaved A/B runs) and lost: the
    broker used 0.1-0.3 s more CPU per 200 MiB and moved files no faster. Measured again
    once the channel-data fast path had made the relay thread lighter (legacy scp download,
    ten interleaved A/B rounds): 0.81 CPU-s against 0.77, and the same wall time.
    """

    __slots__ = ("broken", "heap", "limit", "next", "pending", "seq", "sha", "start")

    def __init__(self, limit: int) -> None:
        self.sha = hashlib.sha256()
        self.start: int | None = None
        self.next = 0
        self.heap: list[tuple[int, int, bytes]] = []
        self.pending = 0
        self.seq = 0
        self.limit = limit
        self.broken = False

    def begin(self, offset: int) -> None:
        """The first request's offset is where the content moved starts."""
        if self.start is None:
            self.start = self.next = offset

    def add(self, offset: int, data: memoryview) -> None:
        if self.broken:
            return
        n = len(data)
        if self.start is None:
            self.start = self.next = offset
        nxt = self.next
        if offset == nxt:
            if n:
                self.sha.update(data)
                self.next = nxt + n
                if self.heap:
                    self._drain()
        elif offset > nxt:
            if not n:
                return
            self.pending += n
            if self.pending > self.limit:
                self._break()
                return
            self.seq += 1
            heapq.heappush(self.heap, (offset, self.seq, bytes(data)))
        elif offset < self.start:
            self._break()
        elif offset + n > nxt:  # overlaps what is hashed already: hash only the new tail
            self.sha.update(data[nxt - offset:])
            self.next = offset + n
            if self.heap:
                self._drain()

    def _drain(self) -> None:
        heap = self.heap
        while heap and heap[0][0] <= self.next:
            offset, _, chunk = heapq.heappop(heap)
            self.pending -= len(chunk)
            end = offset + len(chunk)
            if end > self.next:
                self.sha.update(memoryview(chunk)[self.next - offset:])
                self.next = end

    def _break(self) -> None:
        self.broken = True
        self.heap.clear()
        self.pending = 0

    def hexdigest(self) -> str | None:
        if self.broken or self.heap:
            return None
        return self.sha.hexdigest()


class _File:
    __slots__ = ("access", "bytes_read", "bytes_written", "error", "opened", "read_hash",
                 "reads", "record", "write_hash", "writes")

    def __init__(self, record: dict[str, object], access: int, opened: float, limit: int) -> None:
        self.record = record
        self.access = access
        self.opened = opened
        self.bytes_read = 0
        self.bytes_written = 0
        self.reads = 0
        self.writes = 0
        self.read_hash = _OrderedHash(limit)
        self.write_hash = _OrderedHash(limit)
        self.error: str | None = None

    @property
    def path(self) -> object:
        return self.record.get("path")

    def summary(self, result: str) -> dict[str, object]:
        reads, writes = self.reads > 0, self.writes > 0
        if not reads and not writes:
            reads = bool(self.access & _ACCESS_READ)
            writes = bool(self.access & _ACCESS_WRITE)
        op = "download" if reads and not writes else "upload" if writes and not reads else "open"
        line: dict[str, object] = {**self.record, "op": op, "bytes_read": self.bytes_read,
                                   "bytes_written": self.bytes_written}
        non_sequential = False
        for hasher, key, offset_key, used in (
            (self.read_hash, "sha256_read", "read_offset", self.reads or op == "download"),
            (self.write_hash, "sha256_written", "write_offset", self.writes or op == "upload"),
        ):
            if not used:
                continue
            digest = hasher.hexdigest()
            line[key] = digest
            non_sequential = non_sequential or digest is None
            if hasher.start:
                line[offset_key] = hasher.start
        if non_sequential:
            line["hash"] = "non-sequential"
        line["opened"] = self.opened
        if result == "ok" and self.error is not None:
            result = self.error
        line["result"] = result
        return line


class _Dir:
    __slots__ = ("entries", "error", "opened", "record")

    def __init__(self, record: dict[str, object], opened: float) -> None:
        self.record = record
        self.opened = opened
        self.entries = 0
        self.error: str | None = None

    @property
    def path(self) -> object:
        return self.record.get("path")

    def summary(self, result: str) -> dict[str, object]:
        if result == "ok" and self.error is not None:
            result = self.error
        return {**self.record, "entries": self.entries, "opened": self.opened, "result": result}
