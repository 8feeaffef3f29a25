"""A cheap "has anything been committed?" check for an SQLite database file.

The change feed asks four times a second. Answering with a query through the async engine
costs a thread hop, an ORM round and a ``BEGIN IMMEDIATE`` (a write lock) each time; this
asks ``PRAGMA data_version`` on a connection of its own that never writes, which SQLite
changes whenever any other connection commits. It reads no table and takes no lock a writer
waits for.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class SQLiteChangeProbe:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    def changed(self) -> bool:
        """Whether anything was committed since the last call. True on the first call and
        whenever the probe cannot tell (the caller then does the real query)."""
        try:
            if self._conn is None:
                # mode=rw: never create the file; timeout=0: never wait on a writer
                self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw",
                                             uri=True, timeout=0, isolation_level=None,
                                             check_same_thread=False)
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            self.close()
            self._version = None
            return True
        changed = version != self._version
        self._version = version
        return changed

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
