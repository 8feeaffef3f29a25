"""The broker's exceptions. Each one's message is a single line a user can act on.

    BrokerError
    ├── ConfigError          broker.toml or BROKER_* overrides are wrong
    ├── UsageError           a command-line argument is wrong (exit status 2)
    │   └── BadText          free text breaks the text rule (broker/domain/text.py)
    ├── NotFound             a named technician, device, request, grant ... does not exist
    ├── Conflict             the object already exists, or its state forbids the operation
    │   └── DuplicateRow     the database refused a row another writer made first
    ├── Refused              a rule said no (policy, invariant, state machine)
    ├── StoreError           the database is missing, un-migrated or unreachable
    ├── DeviceError          the device could not be reached or refused the broker's login
    └── SessionRefused       this node opens no new session now (draining, no recording)
        └── RecordingUnavailable   a recording file cannot be created (full, read-only ...)

Lower layers' errors (SQLAlchemy in ``Store.session()``, asyncssh, the domain's own) are
mapped to these in one place each, with ``raise ... from``, so the CLI and the protocol
handlers catch only these.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker reports to a user."""

    exit_status = 1


class ConfigError(BrokerError):
    pass


class UsageError(BrokerError):
    exit_status = 2


class BadText(UsageError):
    """Free text (a reason, a comment ...) that breaks the text rule; ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(BrokerError):
    pass


class Conflict(BrokerError):
    pass


class DuplicateRow(Conflict):
    """A unique or foreign key broken in the database (mapped in ``Store.session()``)."""


class Refused(BrokerError):
    pass


class StoreError(BrokerError):
    pass


class DeviceError(BrokerError):
    """Its message names the device by its broker name only (technicians see it); ``full``
    adds what only staff and the audit log may see, such as the device's address."""

    def __init__(self, message: str, internal: str | None = None) -> None:
        super().__init__(message)
        self.internal = internal

    @property
    def full(self) -> str:
        return f"{self}: {self.internal}" if self.internal else str(self)


class SessionRefused(BrokerError):
    """This node opens no new session now (draining, recordings not writable); ``reason``
    is the short word audited with the refusal."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RecordingUnavailable(SessionRefused):
    """A recording file could not be created (the storage is full, read-only or failing), so
    the channel, forward or request that needed it is refused: nothing goes through the
    broker unrecorded. ``error`` is the system's words for it (never a path)."""

    def __init__(self, error: str) -> None:
        super().__init__(f"this cannot be recorded right now ({error}), and nothing goes"
                         " through the broker unrecorded; try again later or tell the"
                         " hospital's IT", "recording-unavailable")
        self.error = error
