"""What the simulated device remembers between sessions: its identity, credentials, its file
system (``root``, seeded with a log, a configuration file and a firmware version), its
configuration and its log. The console's commands (:mod:`broker.demo.shell`) act on it."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

LOG_FILE = "logs/pump.log"
CONFIG_FILE = "config/pump.conf"
VERSION_FILE = "firmware/VERSION"

_SIMULATED_UPTIME_AT_START = timedelta(days=3, hours=4, minutes=12, seconds=9)
_PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"


@dataclass(frozen=True)
class DeviceIdentity:
    """What the device says about itself."""

    name: str = "pump-7"
    model: str = "Infusomat Space P"
    firmware: str = "4.2.1"
    serial: str = "SN-00417"


def deterministic_bytes(count: int, offset: int = 0) -> bytes:
    """The bytes `bytes COUNT` writes (starting `offset` bytes into the stream)."""
    if count <= 0:
        return b""
    start = offset % len(_PATTERN)
    repeats = (start + count) // len(_PATTERN) + 1
    return (_PATTERN * repeats)[start : start + count]


def _seed_log(identity: DeviceIdentity, now: datetime) -> str:
    events = [
        (timedelta(days=3, hours=4, minutes=12), "INFO ", f"boot firmware {identity.firmware}"),
        (timedelta(days=3, hours=4, minutes=11), "INFO ", "self-test passed (motor, sensors)"),
        (timedelta(days=3, hours=4), "INFO ", "drug library DL-2024-03 loaded (412 entries)"),
        (timedelta(days=2, hours=20), "INFO ", "infusion started: channel A, 125 ml/h"),
        (timedelta(days=2, hours=17), "WARN ", "air-in-line alarm: channel A (cleared)"),
        (timedelta(days=2, hours=12), "INFO ", "infusion completed: channel A, 1000 ml"),
        (timedelta(days=1, hours=9), "INFO ", "battery calibration completed (capacity 96 %)"),
        (timedelta(days=1, hours=3), "WARN ", "occlusion alarm downstream: channel A (cleared)"),
        (timedelta(hours=22), "INFO ", "network: dhcp lease renewed"),
        (timedelta(hours=6), "INFO ", "infusion started: channel A, 80 ml/h"),
        (timedelta(hours=2), "INFO ", "infusion completed: channel A, 160 ml"),
        (timedelta(minutes=30), "INFO ", "standby"),
    ]
    return "".join(f"{_stamp(now - ago)} {level} {text}\n" for ago, level, text in events)


def _seed_config(identity: DeviceIdentity) -> str:
    return (
        f"# {identity.model} configuration ({identity.serial})\n"
        "rate_limit_ml_h = 1200\n"
        "occlusion_pressure_level = 5\n"
        "kvo_rate_ml_h = 3\n"
        "alarm_volume = 7\n"
        "drug_library = DL-2024-03\n"
        "network_dhcp = on\n"
    )


def seed_root(root: Path, identity: DeviceIdentity) -> None:
    """Create the device's file system under `root`, keeping files that already exist."""
    files = {
        LOG_FILE: _seed_log(identity, datetime.now(UTC)),
        CONFIG_FILE: _seed_config(identity),
        VERSION_FILE: f"{identity.model} firmware {identity.firmware}\n",
    }
    for relative, content in files.items():
        path = root / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class DeviceState:
    """Everything the device remembers across sessions."""

    def __init__(
        self, root: Path, identity: DeviceIdentity, username: str, password: str | None
    ) -> None:
        self.root = root.resolve()
        self.identity = identity
        self.username = username
        self.password = password
        self._started = time.monotonic()

    def check_password(self, username: str, password: str) -> bool:
        """Constant-time check of both user name and password (False if none is set)."""
        expected = self.password or ""
        user_ok = hmac.compare_digest(username.encode(), self.username.encode())
        password_ok = hmac.compare_digest(password.encode(), expected.encode())
        return user_ok and password_ok and self.password is not None

    def uptime(self) -> timedelta:
        return _SIMULATED_UPTIME_AT_START + timedelta(seconds=time.monotonic() - self._started)

    def log(self, level: str, message: str) -> None:
        """Append an event to the device's log (best effort, like a real device)."""
        path = self.root / LOG_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"{_stamp(datetime.now(UTC))} {level:<5} {message}\n")
        except OSError:
            pass

    def read_config(self) -> list[tuple[str, str]]:
        lines = (self.root / CONFIG_FILE).read_text(encoding="utf-8").splitlines()
        pairs = []
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                pairs.append((key.strip(), value.strip()))
        return pairs

    def set_config(self, key: str, value: str) -> bool:
        """Rewrite `key` in the configuration file; False if the key does not exist."""
        path = self.root / CONFIG_FILE
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            name, sep, _ = line.partition("=")
            if sep and not line.lstrip().startswith("#") and name.strip() == key:
                lines[index] = f"{key} = {value}"
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
                return True
        return False


# ---------------------------------------------------------------- the interpreter
