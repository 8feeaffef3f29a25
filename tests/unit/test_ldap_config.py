"""``[ldap]`` in broker.toml: a good directory section loads; every mistake is one line naming
the file, the key and what is wrong (and the bind password is never a key of the file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.config import load_config
from broker.directory.ldap import user_filter
from broker.domain.dn import DNError, normalize_dn, split_dn
from broker.errors import ConfigError

GOOD = {
    "url": "ldaps://dc1.hospital.example",
    "ca_file": "hospital-ca.pem",
    "bind_dn": "CN=svc-broker,OU=Service Accounts,DC=hospital,DC=example",
    "bind_password_env": "LDAP_BIND_PASSWORD",
    "user_base": "OU=Staff,DC=hospital,DC=example",
    "user_filter": "(&(objectClass=user)(|(sAMAccountName={name})(mail={email})))",
}
GROUPS = {"biomed": ["CN=Biomed Engineering,OU=Groups,DC=hospital,DC=example"]}
ROLES = {"admin": ["CN=Broker Admins,OU=Groups,DC=hospital,DC=example"]}


def write(tmp_path: Path, ldap: dict[str, object], groups: dict[str, list[str]] | None = None,
          roles: dict[str, list[str]] | None = None) -> Path:
    lines = ["[ldap]", *(f"{k} = {json.dumps(v)}" for k, v in ldap.items())]
    for table, mapping in (("groups", groups), ("roles", roles)):
        if mapping is not None:
            lines += [f"[ldap.{table}]", *(f"{k} = {json.dumps(v)}" for k, v in mapping.items())]
    path = tmp_path / "broker.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def error_of(path: Path, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=dict(environ))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_an_active_directory_section_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD, GROUPS, ROLES), environ={})
    ldap = config.settings.ldap
    assert ldap.url == "ldaps://dc1.hospital.example" and ldap.cache_seconds == 60
    assert ldap.group_lookup == "memberof" and ldap.group_attribute == "memberOf"
    assert ldap.groups == {"biomed": (GROUPS["biomed"][0],)}
    assert config.path(ldap.ca_file) == tmp_path / "hospital-ca.pem"


def test_active_directory_nested_groups_rule_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {
        **GOOD, "group_lookup": "member", "group_base": "OU=Groups,DC=hospital,DC=example",
        "member_attribute": "member:1.2.840.113556.1.4.1941:"}, GROUPS), environ={})
    assert config.settings.ldap.member_attribute == "member:1.2.840.113556.1.4.1941:"
    message = error_of(write(tmp_path, {**GOOD, "group_attribute": "memberOf:1.2:"}, GROUPS))
    assert "[ldap] group_attribute: expected an LDAP attribute name" in message


def test_plain_ldap_is_fine_with_start_tls_on_loopback_or_anonymously(tmp_path: Path) -> None:
    for ldap in ({**GOOD, "url": "ldap://dc1.hospital.example:389", "start_tls": True},
                 {**GOOD, "url": "ldap://127.0.0.1:3890"},
                 {**GOOD, "url": "ldap://dc1.hospital.example", "bind_dn": "",
                  "bind_password_env": ""}):
        assert load_config(write(tmp_path, ldap, GROUPS), environ={}).settings.ldap.url


def test_off_by_default_and_overridable_from_the_environment(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, {}), environ={}).settings.ldap.url == ""
    config = load_config(write(tmp_path, GOOD, GROUPS),
                         environ={"BROKER_LDAP_CACHE_SECONDS": "5",
                                  "BROKER_LDAP_URL": "ldap://127.0.0.1:3890",
                                  "BROKER_LDAP_CA_FILE": ""})
    assert config.settings.ldap.cache_seconds == 5
    assert config.settings.ldap.url == "ldap://127.0.0.1:3890"


@pytest.mark.parametrize(("change", "expected"), [
    ({"url": "http://dc1.hospital.example"},
     "[ldap] url: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT], got"),
    ({"url": "ldap://dc1:99999"}, "[ldap] url: expected ldap://HOST[:PORT]"),
    ({"url": "ldap://user:pw@dc1"}, "[ldap] url: expected ldap://HOST[:PORT]"),
    ({"url": "ldap://dc1/dc=x?uid"}, "[ldap] url: expected ldap://HOST[:PORT]"),
    ({"start_tls": True}, "[ldap]: start_tls is for ldap:// URLs (ldaps:// is TLS already)"),
    ({"url": "ldap://dc1.hospital.example"},
     "[ldap]: the bind password would cross the network in clear: use ldaps:// or"
     " start_tls = true (plain ldap:// only to a loopback address)"),
    ({"bind_dn": "svc-broker"}, "[ldap] bind_dn: 'svc-broker' is not a distinguished name"),
    ({"user_base": "hospital.example"}, "[ldap] user_base: 'hospital.example' is not a"),
    ({"bind_password_env": "hunter2 is the password"},
     "[ldap] bind_password_env: expected an environment variable name (the password itself"
     " never goes in the file)"),
    ({"bind_password_env": "BROKER_LDAP_PW"},
     "[ldap] bind_password_env: 'BROKER_LDAP_PW': not a BROKER_* name"),
    ({"bind_password_env": ""}, "[ldap]: bind_password_env is required when bind_dn is set"),
    ({"bind_password": "hunter2"}, "[ldap] bind_password: unknown key"),
    ({"user_base": ""}, "[ldap]: user_base is required when url is set"),
    ({"user_filter": "(uid={user})"},
     "[ldap] user_filter: unknown placeholder {user} in '(uid={user})': use {name} and"
     " {email}"),
    ({"user_filter": "(objectClass=person)"},
     "[ldap] user_filter: expected {name} or {email} in the filter"),
    ({"user_filter": "(|(uid={name})(mail={email})"},
     "[ldap] user_filter: '(|(uid={name})(mail={email})' is not an LDAP search filter"),
    ({"group_lookup": "nested"}, "[ldap] group_lookup: expected memberof or member"),
    ({"group_lookup": "member"}, "[ldap]: group_base is required when group_lookup"),
    ({"group_attribute": "memberOf)(x"}, "[ldap] group_attribute: expected an LDAP attribute"),
    ({"member_attribute": ""}, "[ldap] member_attribute: expected an LDAP attribute name"),
    ({"member_attribute": "member:x)(cn=*:"},
     "[ldap] member_attribute: expected an LDAP attribute name"),
    ({"cache_seconds": -1}, "[ldap] cache_seconds: input should be greater than or equal"),
    ({"cache_seconds": 86400}, "[ldap] cache_seconds: input should be less than or equal"),
    ({"timeout": "soon"}, "[ldap] timeout:"),
    ({"timeout": "5m"}, "[ldap] timeout: '5m' is longer than the most allowed, 1m"),
])
def test_each_mistake_is_one_line(tmp_path: Path, change: dict[str, object],
                                  expected: str) -> None:
    message = error_of(write(tmp_path, {**GOOD, **change}, GROUPS))
    assert message.startswith(f"{tmp_path / 'broker.toml'}: {expected}"), message


@pytest.mark.parametrize(("groups", "roles", "expected"), [
    ({"biomed": ["biomed"]}, None,
     "[ldap] groups: biomed: 'biomed' is not a distinguished name"),
    ({"biomed": []}, None, "[ldap] groups: biomed: no directory group given"),
    (None, {"superuser": ["cn=x,dc=y"]},
     "[ldap] roles: superuser: expected approver, auditor or admin"),
    (None, {"admin": ["cn=a,,dc=y"]}, "[ldap] roles: admin: 'cn=a,,dc=y' is not a"),
    (None, None, "[ldap]: [ldap.groups] (or [ldap.roles]) is required when url is set"),
])
def test_mapping_mistakes_are_one_line(tmp_path: Path, groups: dict[str, list[str]] | None,
                                       roles: dict[str, list[str]] | None,
                                       expected: str) -> None:
    message = error_of(write(tmp_path, GOOD, groups, roles))
    assert message.startswith(f"{tmp_path / 'broker.toml'}: {expected}"), message


def test_an_override_names_the_variable(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, GOOD, GROUPS), BROKER_LDAP_URL="ftp://dc1")
    assert message.startswith("BROKER_LDAP_URL (environment): [ldap] url: expected ldap://")


def test_values_are_escaped_into_the_filter() -> None:
    template = "(|(uid={name})(mail={email}))"
    assert user_filter(template, "bob", "bob@h.example") == "(|(uid=bob)(mail=bob@h.example))"
    assert user_filter(template, "*)(uid=*", "a\\b") == r"(|(uid=\2a\29\28uid=\2a)(mail=a\5cb))"
    # a value that spells a placeholder is not substituted again
    assert user_filter(template, "{email}", "x") == "(|(uid={email})(mail=x))"
    assert user_filter(template, "nul\x00", "") == r"(|(uid=nul\00)(mail=))"


def test_group_dns_compare_without_case_or_spaces() -> None:
    assert normalize_dn("CN=Biomed Engineering, OU=Groups,DC=hospital,DC=example") == \
        normalize_dn("cn=biomed engineering,ou=groups,dc=hospital,dc=example")
    assert normalize_dn("cn=biomed,ou=groups,dc=x") != normalize_dn("cn=biomed2,ou=groups,dc=x")


@pytest.mark.parametrize("dn", ["biomed", "cn=", "=biomed", "cn=a,,dc=x", "cn=a\\", "c n=a",
                                "cn=a,dc=x,"])
def test_malformed_dns_are_refused(dn: str) -> None:
    with pytest.raises(DNError):
        split_dn(dn)


def test_escaped_separators_stay_in_the_value() -> None:
    assert split_dn(r"cn=Smith\, John,ou=people") == [("cn", r"Smith\, John"), ("ou", "people")]
    assert split_dn("2.5.4.3=x + uid=y") == [("2.5.4.3", "x"), ("uid", "y")]


def test_directory_groups_map_to_broker_groups_and_the_highest_role(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from broker.directory.ldap import Directory, DirectoryUser

    shared = "CN=Biomed Engineering,OU=Groups,DC=hospital,DC=example"
    config = load_config(write(
        tmp_path, GOOD, {"biomed": [shared], "icu": [shared.lower(), "cn=icu,dc=x"]},
        {"approver": [shared], "auditor": ["cn=audit,dc=x"], "admin": ["cn=admins,dc=x"]}),
        environ={})
    directory = Directory.from_config(config, lambda: datetime.now(UTC))
    user = DirectoryUser("cn=bob,dc=x", ("cn=Biomed Engineering, ou=GROUPS,dc=hospital,"
                                         "dc=example", "cn=audit,dc=x", "not a dn"))
    assert directory.broker_groups(user) == {"biomed", "icu"}
    assert directory.role(user) == "auditor"  # auditor outranks approver
    assert directory.role(DirectoryUser("cn=x", ("CN=Admins,DC=X", *user.groups))) == "admin"
    assert directory.broker_groups(None) == frozenset() and directory.role(None) is None
    assert directory.where == "directory ldaps://dc1.hospital.example:636"
