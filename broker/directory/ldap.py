"""Users' groups from an LDAP directory (OpenLDAP, Active Directory), read with ldap3.

One lookup connects (``ldaps://``, or ``ldap://`` with optional StartTLS; the server
certificate and host name are verified against ``ca_file`` or the system's trust store), binds
(``bind_dn`` with the password from ``$bind_password_env``, or anonymously), finds the user
with ``user_filter`` (the substituted name and e-mail address escaped per RFC 4515, so a name
like ``*)(uid=*`` matches nothing), reads their groups, and unbinds. Groups come either from an
attribute of the user entry (``memberOf``: Active Directory, OpenLDAP's memberof overlay) or
from a search of ``group_base`` for groups whose ``member_attribute`` names the user's DN
(OpenLDAP ``groupOfNames``/``groupOfUniqueNames``). Referrals are not followed (they would
carry the bind credentials to another host).

ldap3's synchronous strategy runs in a worker thread; the connect and every answer are bounded
by ``timeout``. Answers (found or not found) are kept ``cache_seconds`` per user by the
broker's clock; failures are never kept, so the next question asks the directory again.
The bind password is never logged and never part of an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import (
    LDAPException,
    LDAPResponseTimeoutError,
    LDAPSocketOpenError,
    LDAPSocketReceiveError,
    LDAPSocketSendError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars

from broker.aio import within
from broker.config import Config, LDAPSection
from broker.domain.dn import DNError
from broker.domain.dn import normalize_dn as _normalize
from broker.domain.durations import parse_duration

_T = TypeVar("_T")
_ERRNO = re.compile(r"\[?Errno -?\d+\]\s*")
ROLE_ORDER = ("admin", "auditor", "approver")  # the highest mapped role wins (as with OIDC)
MAX_CACHED = 10000  # users whose answers are kept; expired ones are dropped beyond this
MAX_GROUPS = 5000  # groups read per user (a member search); more is a misconfiguration


class DirectoryError(Exception):
    """The directory could not answer: one line naming the directory and what went wrong."""


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    groups: tuple[str, ...]  # the group DNs, as the directory spells them


def normalize_dn(dn: str) -> str:
    """``broker.domain.dn.normalize_dn``, tolerating a malformed DN from the directory."""
    try:
        return _normalize(dn)
    except DNError:
        return dn.strip().lower()


def user_filter(template: str, name: str, email: str) -> str:
    """``template`` with ``{name}`` and ``{email}`` replaced by their escaped values."""
    values = {"{name}": escape_filter_chars(name), "{email}": escape_filter_chars(email)}
    out, i = [], 0
    while i < len(template):
        for placeholder, value in values.items():
            if template.startswith(placeholder, i):
                out.append(value)
                i += len(placeholder)
                break
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


class Directory:
    """The configured directory, with its answers cached per user."""

    def __init__(self, settings: LDAPSection, ca_file: Path | None, password: str | None,
                 now: Callable[[], datetime]) -> None:
        self.settings, self.ca_file, self._password, self._now = (
            settings, ca_file, password, now)
        self.timeout = int(parse_duration(settings.timeout).total_seconds())
        self._cache: dict[tuple[str, str], tuple[datetime, DirectoryUser | None]] = {}
        self._groups: dict[str, set[str]] = {}  # directory group -> broker groups
        for group, dns in settings.groups.items():
            for dn in dns:
                self._groups.setdefault(normalize_dn(dn), set()).add(group)
        self.lookups = 0  # questions that reached the directory (tests, metrics)

    @classmethod
    def from_config(cls, config: Config, now: Callable[[], datetime]) -> Directory:
        settings = config.settings.ldap
        env = settings.bind_password_env
        return cls(settings, config.path(settings.ca_file) if settings.ca_file else None,
                   os.environ.get(env) if env else None, now)

    @property
    def where(self) -> str:
        parts = urlsplit(self.settings.url)
        port = parts.port or (636 if parts.scheme == "ldaps" else 389)
        return f"directory {parts.scheme}://{parts.hostname}:{port}"

    # -- what the broker asks -------------------------------------------------------------
    async def find(self, name: str, email: str) -> DirectoryUser | None:
        """The directory's entry for this approver (None: the filter matches nobody)."""
        email = email.strip()
        key = (name.casefold(), email.casefold())
        now = self._now()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await self._run(self._find_sync, name, email)
        if self.settings.cache_seconds:
            if len(self._cache) >= MAX_CACHED:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + timedelta(seconds=self.settings.cache_seconds), user)
        return user

    async def check(self) -> str:
        """Connect and bind: how the broker is bound (raises DirectoryError)."""
        return await self._run(self._check_sync)

    def broker_groups(self, user: DirectoryUser | None) -> frozenset[str]:
        """The broker approver groups (``[ldap.groups]``) the user's directory groups give."""
        if user is None:
            return frozenset()
        return frozenset(group for dn in map(normalize_dn, user.groups)
                         for group in self._groups.get(dn, ()))

    def role(self, user: DirectoryUser | None) -> str | None:
        """The staff role (``[ldap.roles]``) the user's directory groups give, the highest."""
        if user is None:
            return None
        theirs = {normalize_dn(dn) for dn in user.groups}
        found = {role for role, dns in self.settings.roles.items()
                 if theirs & {normalize_dn(dn) for dn in dns}}
        return next((role for role in ROLE_ORDER if role in found), None)

    def forget(self) -> None:
        self._cache.clear()

    # -- talking to the directory (in a worker thread) ---------------------------------------
    async def _run(self, call: Callable[..., _T], *args: Any) -> _T:
        try:
            return await within(self.timeout * 4, asyncio.to_thread(call, *args))
        except TimeoutError:
            raise DirectoryError(f"{self.where}: no answer within"
                                 f" {self.settings.timeout}") from None

    def _fail(self, what: str, exc: BaseException | None = None) -> DirectoryError:
        detail = f": {' '.join(str(exc).split())[:200]}" if exc is not None and str(exc) else ""
        return DirectoryError(f"{self.where}: {what}{detail}")

    def _connect(self) -> ldap3.Connection:
        settings = self.settings
        parts = urlsplit(settings.url)
        secure = parts.scheme == "ldaps"
        tls = None
        if secure or settings.start_tls:
            if self.ca_file is not None:
                if not self.ca_file.is_file():
                    raise self._fail(f"ca_file {self.ca_file}: no such file")
                try:
                    ssl.create_default_context(cafile=str(self.ca_file))
                except (ssl.SSLError, OSError, ValueError):
                    raise self._fail(f"ca_file {self.ca_file}: holds no PEM certificate"
                                     ) from None
            try:
                tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                                ca_certs_file=str(self.ca_file) if self.ca_file else None)
            except (LDAPException, ssl.SSLError, OSError) as exc:
                raise self._fail(f"ca_file {self.ca_file}: not usable", exc) from None
        server = ldap3.Server(parts.hostname or "", port=parts.port or (636 if secure else 389),
                              use_ssl=secure, tls=tls, get_info=ldap3.NONE,
                              connect_timeout=self.timeout)
        if settings.bind_dn and not self._password:
            raise self._fail(f"the bind password: ${settings.bind_password_env} is not set")
        conn = ldap3.Connection(
            server, user=settings.bind_dn or None,
            password=self._password if settings.bind_dn else None,
            authentication=ldap3.SIMPLE if settings.bind_dn else ldap3.ANONYMOUS,
            auto_bind=ldap3.AUTO_BIND_NONE, read_only=True, auto_referrals=False,
            receive_timeout=self.timeout, raise_exceptions=False, auto_escape=False,
            check_names=False)
        try:
            conn.open()
            if settings.start_tls and not secure and not conn.start_tls():
                raise self._fail("StartTLS refused", _result(conn))
            if not conn.bind():
                who = f"as {settings.bind_dn}" if settings.bind_dn else "anonymously"
                raise self._fail(f"bind {who} refused", _result(conn))
        except DirectoryError:
            _close(conn)
            raise
        except LDAPResponseTimeoutError:
            _close(conn)
            raise self._fail(f"no answer within {settings.timeout}") from None
        except (LDAPSocketOpenError, LDAPSocketReceiveError, LDAPSocketSendError,
                LDAPStartTLSError, ssl.SSLError, OSError) as exc:
            _close(conn)
            raise self._fail(*_socket_problem(exc, parts.hostname or "", settings.timeout)
                             ) from None
        except LDAPException as exc:
            _close(conn)
            raise self._fail("refused the connection", exc) from None
        return conn

    def _check_sync(self) -> str:
        _close(self._connect())
        how = "StartTLS" if self.settings.start_tls else (
            "TLS" if self.settings.url.startswith("ldaps://") else "no TLS")
        who = f"as {self.settings.bind_dn}" if self.settings.bind_dn else "anonymously"
        return f"{self.where}: connected ({how}), bound {who}"

    def _find_sync(self, name: str, email: str) -> DirectoryUser | None:
        self.lookups += 1
        settings = self.settings
        conn = self._connect()
        try:
            memberof = settings.group_lookup == "memberof"
            wanted: list[str] = [settings.group_attribute] if memberof else [ldap3.NO_ATTRIBUTES]
            entries = self._search(conn, settings.user_base,
                                   user_filter(settings.user_filter, name, email), wanted, 2,
                                   "the user search")
            if not entries:
                return None
            if len(entries) > 1:
                raise self._fail(f"user_filter matches more than one entry for {name!r}"
                                 f" (make it match exactly one user)")
            dn, attributes = entries[0]
            if memberof:
                groups = _values(attributes, settings.group_attribute)
            else:
                found = self._search(
                    conn, settings.group_base,
                    f"({settings.member_attribute}={escape_filter_chars(dn)})",
                    [ldap3.NO_ATTRIBUTES], MAX_GROUPS, "the group search")
                groups = tuple(group_dn for group_dn, _ in found)
            return DirectoryUser(dn, groups)
        finally:
            _close(conn)

    def _search(self, conn: ldap3.Connection, base: str, query: str, attributes: list[str],
                limit: int, what: str) -> list[tuple[str, dict[str, Any]]]:
        try:
            conn.search(base, query, search_scope=ldap3.SUBTREE, attributes=attributes,
                        size_limit=limit, time_limit=max(1, int(self.timeout)))
        except LDAPResponseTimeoutError:
            raise self._fail(f"{what}: no answer within {self.settings.timeout}") from None
        except (LDAPSocketReceiveError, LDAPSocketOpenError, LDAPSocketSendError,
                OSError) as exc:
            if "timed out" in _text(exc):
                raise self._fail(f"{what}: no answer within {self.settings.timeout}") from None
            raise self._fail(f"{what}: the connection broke", Exception(_text(exc))) from None
        except LDAPException as exc:
            raise self._fail(f"{what} failed", exc) from None
        result = conn.result or {}
        if result.get("description") not in ("success", "sizeLimitExceeded"):
            raise self._fail(f"{what} under {base} failed", _result(conn))
        return [(str(item["dn"]), dict(item.get("attributes") or {}))
                for item in conn.response or [] if item.get("type") == "searchResEntry"]


def _values(attributes: dict[str, Any], name: str) -> tuple[str, ...]:
    for key, value in attributes.items():
        if key.lower() == name.lower():
            values = value if isinstance(value, list) else [value]
            return tuple(str(v) for v in values if v)
    return ()


def _result(conn: ldap3.Connection) -> Exception | None:
    result = conn.result or {}
    text = result.get("description") or ""
    message = result.get("message") or ""
    return Exception(f"{text} {message}".strip()) if text or message else None


def _text(exc: BaseException) -> str:
    """ldap3's socket errors nest the OS error's text in reprs of tuples: unwrap it."""
    text = " ".join(str(exc).split())
    for wrapper in ("socket ssl wrapping error:", "socket connection error while opening:",
                    "start_tls failed:"):
        if wrapper in text:
            text = text.split(wrapper, 1)[1]
    return _ERRNO.sub("", text).strip(" \"'(),[]") or type(exc).__name__


def _socket_problem(exc: BaseException, host: str, timeout: str
                    ) -> tuple[str, Exception | None]:
    """What went wrong opening the connection, for one line."""
    text = _text(exc)
    if "timed out" in text or isinstance(exc, TimeoutError):
        return f"no answer within {timeout}", None
    if "doesn't match" in text or "hostname mismatch" in text.lower():
        return (f"TLS failed: the directory's certificate is not for {host} (connect by a"
                " name or address the certificate names)"), None
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        why = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        return (f"TLS failed: the directory's certificate is not trusted ({why}; set ca_file"
                " to the CA that signed it)"), None
    if isinstance(exc, LDAPStartTLSError | ssl.SSLError) or "ssl" in text.lower():
        return "TLS failed", Exception(text)
    return "cannot connect", Exception(_ERRNO.sub("", text))


def _close(conn: ldap3.Connection) -> None:
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
