"""The policy file's schema: every key of ``policies/*.yaml`` as pydantic models whose
validators turn text into domain values (protocols, hours, durations, file rules). The
loader (:mod:`broker.policy.loader`) reads the YAML, validates it here and reports every
problem with its line."""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from broker.domain.durations import parse_duration
from broker.domain.file_rules import (
    FileRules,
    check_name_pattern,
    check_path_pattern,
    parse_size,
)
from broker.domain.policy import ApprovalRule, HoursWindow, Policy, Rules
from broker.domain.protocols import ALL_PROTOCOLS, Protocol
from broker.policy.session_spec import CommandRuleSpec, StrictSpec, Supervision, session_rules

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_PROTOCOL_CHOICES = ", ".join(p.value for p in Protocol)
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _protocol(value: object) -> Protocol:
    if isinstance(value, str) and value.strip().lower() in {p.value for p in Protocol}:
        return Protocol(value.strip().lower())
    raise ValueError(f"unknown protocol {value!r} (choose from {_PROTOCOL_CHOICES})")


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is out of range 1..65535")
    return value


def _count(value: int) -> int:
    if value < 1:
        raise ValueError(f"count must be at least 1, not {value}")
    return value


def _day(value: object) -> int:
    if isinstance(value, str):
        name = value.strip().lower()
        for index, day in enumerate(_DAYS):
            if name in (day, day[:3]):
                return index
    raise ValueError(f"unknown day {value!r} (write mon, tue, wed, thu, fri, sat or sun)")


def _clock(value: object) -> time:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 19:00 as the base-60 number 1140.
        hours, minutes = divmod(value, 60)
        raise ValueError(f'write the time in quotes, like "{hours}:{minutes:02d}"')
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'{value!r} is not a time of day (write HH:MM, like "07:30")')
    return time(int(match.group(1)), int(match.group(2)))


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        raise ValueError(
            f"unknown timezone {value!r} (use an IANA name like Europe/Berlin)"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_text)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
ProtocolName = Annotated[Protocol, BeforeValidator(_protocol)]
Port = Annotated[int, AfterValidator(_port)]
Day = Annotated[int, BeforeValidator(_day)]
Clock = Annotated[time, BeforeValidator(_clock)]
Timezone = Annotated[str, AfterValidator(_timezone)]
Size = Annotated[int, BeforeValidator(parse_size)]
NamePattern = Annotated[str, AfterValidator(check_name_pattern)]
PathPattern = Annotated[str, AfterValidator(check_path_pattern)]


# --- the file format -----------------------------------------------------------------------


class DevicesSpec(StrictSpec):
    tags: list[Text] = []
    names: list[Text] = []


# a list key given empty is a mistake (omitting it means "any"/"all"): what to say, by key
_EMPTY_LIST = {
    "vendors": "empty list: omit vendors to allow any vendor",
    "protocols": "empty list: name at least one protocol, or omit protocols to allow all",
    "approvals": "empty list: omit approvals for one approval from any approver",
    "days": "empty list: name at least one day, or omit days for every day",
    "paths": "empty list: name at least one path, or omit paths to allow any",
}


def _not_empty(value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
    if value is not None and not value:
        raise ValueError(_EMPTY_LIST[str(info.field_name)])
    return value


class ApprovalSpec(StrictSpec):
    count: Annotated[int, AfterValidator(_count)]
    groups: list[Text] = []


class HoursSpec(StrictSpec):
    days: list[Day] | None = None
    start: Clock = Field(alias="from")
    end: Clock = Field(alias="to")
    timezone: Timezone

    _some_days = field_validator("days")(classmethod(lambda cls, v, info: _not_empty(v, info)))

    def to_window(self) -> HoursWindow:
        days = range(7) if self.days is None else self.days
        return HoursWindow(frozenset(days), self.start, self.end, self.timezone)


class FilesSpec(StrictSpec):
    upload: Literal["allow", "deny"] = "allow"
    download: Literal["allow", "deny"] = "allow"
    max_size: Size | None = None
    deny_names: list[NamePattern] = []
    paths: list[PathPattern] | None = None

    _some_paths = field_validator("paths")(
        classmethod(lambda cls, v, info: _not_empty(v, info)))

    def to_rules(self) -> FileRules:
        return FileRules(upload=self.upload == "allow", download=self.download == "allow",
                         max_size=self.max_size, deny_names=tuple(self.deny_names),
                         paths=tuple(self.paths or ()))




class PolicySpec(StrictSpec):
    name: Text
    description: str = ""
    vendors: list[Text] | None = None
    devices: DevicesSpec | None = None
    max_duration: Duration = timedelta(hours=8)
    protocols: list[ProtocolName] | None = None
    forward_ports: list[Port] = []
    approvals: list[ApprovalSpec] | None = None
    hours: HoursSpec | None = None
    require_totp: bool = False
    breakglass_max: Duration | None = None
    pending_expiry: Duration = timedelta(hours=24)
    commands: list[CommandRuleSpec] = []
    supervision: Supervision = "none"
    files: FilesSpec | None = None

    _some = field_validator("vendors", "protocols", "approvals")(
        classmethod(lambda cls, v, info: _not_empty(v, info)))

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, devices: DevicesSpec | None) -> DevicesSpec | None:
        if devices is not None and not devices.tags and not devices.names:
            raise ValueError("give tags and/or names, or omit devices to allow any device")
        return devices

    def to_policy(self, source: str, line: int, command_lines: list[int] | None = None
                  ) -> Policy:
        devices = self.devices or DevicesSpec()
        approvals = [ApprovalRule(a.count, tuple(a.groups)) for a in self.approvals or ()]
        return Policy(
            name=self.name,
            source=source,
            line=line,
            vendors=None if self.vendors is None else frozenset(self.vendors),
            device_names=frozenset(devices.names),
            device_tags=frozenset(devices.tags),
            description=self.description.strip(),
            rules=Rules(
                max_duration=self.max_duration,
                protocols=ALL_PROTOCOLS if self.protocols is None else frozenset(self.protocols),
                forward_ports=frozenset(self.forward_ports),
                approvals=tuple(approvals) or (ApprovalRule(1),),
                hours=self.hours.to_window() if self.hours else None,
                require_totp=self.require_totp,
                breakglass_max=self.breakglass_max,
                pending_expiry=self.pending_expiry,
                session=session_rules(self.commands, self.supervision, command_lines),
                files=self.files.to_rules() if self.files else FileRules(),
            ),
        )


KNOWN_FIELDS = sorted(
    {"policies"}
    | {
        field.alias or name
        for model in (PolicySpec, DevicesSpec, ApprovalSpec, HoursSpec, CommandRuleSpec,
                      FilesSpec)
        for name, field in model.model_fields.items()
    }
)
