"""Who people are: ``[oidc]`` (staff single sign-on), ``[vendors]``, ``[ldap]`` (directory
groups)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from broker.config._base import _ENV_NAME, _duration_text, _Section, _url_parts


class OIDCSection(_Section):
    """Staff single sign-on with the hospital's OpenID Connect provider
    (``broker/http/staff/oidc``); empty issuer = off."""

    issuer: str = ""  # e.g. https://login.microsoftonline.com/<tenant>/v2.0
    provider_name: str = ""  # on the button: "Sign in with <provider_name>" (default: host)
    client_id: str = ""
    # name of the environment variable holding the secret (not BROKER_*: those are overrides)
    client_secret_env: str = ""
    scopes: str = "openid email profile groups"
    group_claim: str = "groups"  # the ID token claim listing the user's groups
    role_claim: str = ""  # optional: a claim naming the role directly (approver|auditor|admin)
    username_claim: str = "preferred_username"  # the staff name (else email, else sub)
    redirect_url: str = ""  # empty: [broker] public_url + /staff/oidc/callback
    local_login: bool = True  # local accounts (break-glass); false: password form gone
    roles: dict[str, tuple[str, ...]] = {}  # [oidc.roles] admin = ["biomed-admins"], ...

    @field_validator("issuer", "redirect_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname
                      or parts.query or parts.fragment):
            raise ValueError(f"expected an http(s) URL without query or fragment, got {value!r}")
        if value and parts.scheme == "http" and parts.hostname not in (
                "localhost", "127.0.0.1", "::1"):
            raise ValueError(f"expected https (http only on a loopback address), got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: str) -> str:
        if "openid" not in value.split():
            raise ValueError(f"the scopes must include 'openid', got {value!r}")
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for role in value:
            if role not in ("approver", "auditor", "admin"):
                raise ValueError(f"[oidc.roles] {role}: expected approver, auditor or admin")
        return value

    @property
    def display_name(self) -> str:
        """The provider's name on the sign-in button."""
        return self.provider_name or urlsplit(self.issuer).hostname or "single sign-on"

    @model_validator(mode="after")
    def _complete(self) -> OIDCSection:
        if self.issuer and not self.client_id:
            raise ValueError("client_id is required when issuer is set")
        if self.issuer and not (self.roles or self.role_claim):
            raise ValueError("[oidc.roles] (or role_claim) is required when issuer is set: "
                             "no group would map to a role")
        if self.client_secret_env.upper().startswith("BROKER_"):
            raise ValueError("client_secret_env: not a BROKER_* name (those override settings)")
        if not self.issuer and not self.local_login:
            raise ValueError("local_login = false needs an issuer: nobody could sign in")
        return self


class VendorsSection(_Section):
    """The technician lifecycle (``broker/services/vendors.py``)."""

    # a technician with no successful login for this many days is disabled by the scheduler
    inactive_days: int = Field(default=90, ge=1)


_LDAP_ROLES = ("approver", "auditor", "admin")
_PLACEHOLDERS = re.compile(r"\{([^{}]*)\}")


class LDAPSection(_Section):
    """Approver groups and staff roles from the hospital's directory (LDAP / Active
    Directory, ``broker/directory``); empty url = off (approver groups from the database)."""

    url: str = ""  # ldap://HOST[:PORT] or ldaps://HOST[:PORT]
    start_tls: bool = False  # ldap:// only: upgrade with StartTLS before binding
    ca_file: str = ""  # trust this CA (PEM) for ldaps:// and StartTLS; empty: system store
    bind_dn: str = ""  # empty: anonymous bind
    # name of the environment variable holding the bind password (never in this file)
    bind_password_env: str = ""
    user_base: str = ""  # e.g. ou=people,dc=hospital,dc=example
    # {name} is the approver's name, {email} their e-mail address (both escaped, RFC 4515)
    user_filter: str = "(|(uid={name})(mail={email}))"
    # memberof: the user entry's group_attribute lists its groups (Active Directory, OpenLDAP
    # with the memberof overlay); member: groups under group_base whose member_attribute
    # names the user (OpenLDAP groupOfNames member / groupOfUniqueNames uniqueMember)
    group_lookup: str = "memberof"
    group_attribute: str = "memberOf"
    group_base: str = ""
    member_attribute: str = "member"  # or uniqueMember; AD nested: member:1.2.840.113556.1.4.1941:
    cache_seconds: int = Field(default=60, ge=0, le=3600)
    timeout: str = "5s"  # connecting, and each operation
    groups: dict[str, tuple[str, ...]] = {}  # [ldap.groups] biomed = ["cn=biomed,ou=..."]
    roles: dict[str, tuple[str, ...]] = {}  # [ldap.roles] admin = ["cn=broker-admins,..."]

    _timeout = field_validator("timeout")(
        classmethod(lambda cls, v: _duration_text(v, at_most="1m", at_least="1s")))

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts, port = _url_parts(value)
        if (parts.scheme not in ("ldap", "ldaps") or not parts.hostname or port == -1
                or parts.path not in ("", "/") or parts.query or parts.fragment
                or parts.username or parts.password):
            raise ValueError(f"expected ldap://HOST[:PORT] or ldaps://HOST[:PORT], got {value!r}")
        return value.rstrip("/")

    @field_validator("bind_password_env")
    @classmethod
    def _env(cls, value: str) -> str:
        if value and not _ENV_NAME.match(value):
            raise ValueError(f"expected an environment variable name (the password itself"
                             f" never goes in the file), got {value!r}")
        if value.upper().startswith("BROKER_"):
            raise ValueError(f"{value!r}: not a BROKER_* name (those override settings)")
        return value

    @field_validator("bind_dn", "user_base", "group_base")
    @classmethod
    def _dn(cls, value: str) -> str:
        return _check_dn(value) if value else value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        unknown = [p for p in _PLACEHOLDERS.findall(value) if p not in ("name", "email")]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {value!r}: use {{name}}"
                             f" and {{email}}")
        if "{name}" not in value and "{email}" not in value:
            raise ValueError(f"expected {{name}} or {{email}} in the filter, got {value!r}")
        _check_filter(value.replace("{name}", "x").replace("{email}", "x"), value)
        return value

    @field_validator("group_lookup")
    @classmethod
    def _lookup(cls, value: str) -> str:
        if value.lower() not in ("memberof", "member"):
            raise ValueError(f"expected memberof or member, got {value!r}")
        return value.lower()

    @field_validator("group_attribute", "member_attribute")
    @classmethod
    def _attribute(cls, value: str, info: Any) -> str:
        # member_attribute may carry a matching rule: Active Directory's nested-group rule
        # LDAP_MATCHING_RULE_IN_CHAIN is "member:1.2.840.113556.1.4.1941:"
        rule = r"(:[0-9]+(\.[0-9]+)*:)?" if info.field_name == "member_attribute" else ""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,63}" + rule, value):
            raise ValueError(f"expected an LDAP attribute name, got {value!r}")
        return value

    @field_validator("groups", "roles")
    @classmethod
    def _mapping(cls, value: dict[str, tuple[str, ...]], info: Any) -> dict[str, tuple[str, ...]]:
        for name, dns in value.items():
            if info.field_name == "roles" and name not in _LDAP_ROLES:
                raise ValueError(f"{name}: expected approver, auditor or admin")
            if not dns:
                raise ValueError(f"{name}: no directory group given")
            for dn in dns:
                try:
                    _check_dn(dn)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _complete(self) -> LDAPSection:
        if not self.url:
            return self
        if self.start_tls and self.url.startswith("ldaps://"):
            raise ValueError("start_tls is for ldap:// URLs (ldaps:// is TLS already)")
        if not self.user_base:
            raise ValueError("user_base is required when url is set")
        if self.group_lookup == "member" and not self.group_base:
            raise ValueError("group_base is required when group_lookup = \"member\"")
        if self.bind_dn and not self.bind_password_env:
            raise ValueError("bind_password_env is required when bind_dn is set (the name of"
                             " the variable holding the password)")
        parts = urlsplit(self.url)
        if (self.bind_dn and parts.scheme == "ldap" and not self.start_tls
                and parts.hostname not in ("localhost", "127.0.0.1", "::1")):
            raise ValueError("the bind password would cross the network in clear: use"
                             " ldaps:// or start_tls = true (plain ldap:// only to a loopback"
                             " address)")
        if not (self.groups or self.roles):
            raise ValueError("[ldap.groups] (or [ldap.roles]) is required when url is set: no"
                             " directory group would map to anything")
        return self


def _check_dn(value: str) -> str:
    from broker.domain.dn import DNError, split_dn

    try:
        split_dn(value)
    except DNError as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_filter(value: str, shown: str) -> None:
    from ldap3.core.exceptions import LDAPInvalidFilterError
    from ldap3.operation.search import parse_filter

    try:
        parse_filter(value, None, False, False, None, False)  # type: ignore[no-untyped-call]
    except (LDAPInvalidFilterError, ValueError, IndexError, TypeError):
        raise ValueError(f"{shown!r} is not an LDAP search filter (RFC 4515), like"
                         " (|(uid={name})(mail={email}))") from None
