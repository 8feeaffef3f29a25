"""broker.toml and BROKER_* overrides: defaults, paths, URLs, and one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from textwrap import dedent

import pytest

from broker.config import (
    Config,
    config_path,
    load_config,
    render_default_config,
)
from broker.errors import ConfigError


def write(directory: Path, text: str, name: str = "broker.toml") -> Path:
    path = directory / name
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(path: Path, **environ: str) -> Config:
    return load_config(path, environ=dict(environ))


def error_of(path: Path, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path, **environ)
    message = str(caught.value)
    assert "\n" not in message, message
    assert "Traceback" not in message
    return message


def test_defaults_from_an_empty_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""))
    s = config.settings
    assert s.ssh.listen == "0.0.0.0:2222" and s.ssh.proxy_protocol is False
    assert s.http.listen == "0.0.0.0:8443"
    assert s.http.tls_cert == "data/tls.crt" and s.http.tls_key == "data/tls.key"
    assert s.recording.dir == "recordings" and s.recording.retain_days == 2555
    assert s.policy.dir == "policies"
    assert s.broker.database_url == "sqlite:///data/broker.db"
    assert s.log.level == "info"
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/data/broker.db"


def test_rendered_default_file_is_valid_and_matches_defaults(tmp_path: Path) -> None:
    text = render_default_config("https://broker.example.org:8443")
    tomllib.loads(text)
    config = load(write(tmp_path, text))
    assert config.settings.broker.public_url == "https://broker.example.org:8443"
    assert config.settings.model_dump() == load(write(tmp_path, """
        [broker]
        public_url = "https://broker.example.org:8443"
        """, "other.toml")).settings.model_dump()


def test_relative_paths_resolve_against_the_files_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "broker"
    conf_dir.mkdir(parents=True)
    path = write(conf_dir, """
        [recording]
        dir = "../../var/rec"
        [policy]
        dir = "/srv/policies"
        [broker]
        database_url = "sqlite:///db/b.db"
        """)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path("..") / "etc" / "broker" / "broker.toml"  # a relative --config, too
    config = load(relative)
    assert config.base_dir == conf_dir.resolve()
    assert config.recordings_dir == conf_dir.resolve() / "../../var/rec"
    assert config.recordings_dir.resolve() == (tmp_path / "var" / "rec").resolve()
    assert config.policy_dir == Path("/srv/policies")
    assert config.data_dir == conf_dir.resolve() / "data"
    assert config.log_file == conf_dir.resolve() / "data" / "broker.log"
    assert config.database_url == f"sqlite+aiosqlite:///{conf_dir.resolve()}/db/b.db"
    assert load(path).base_dir == config.base_dir


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:////var/lib/broker/b.db", "sqlite+aiosqlite:////var/lib/broker/b.db"),
    ("sqlite+aiosqlite:////var/lib/broker/b.db", "sqlite+aiosqlite:////var/lib/broker/b.db"),
    ("sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
    ("postgresql://broker@db.internal/broker", "postgresql+asyncpg://broker@db.internal/broker"),
    ("postgresql+asyncpg://broker:pw@db:5432/broker", "postgresql+asyncpg://broker:pw@db:5432/broker"),
])
def test_database_url_mapping(tmp_path: Path, url: str, expected: str) -> None:
    config = load(write(tmp_path, f'[broker]\ndatabase_url = "{url}"\n'))
    assert config.database_url == expected


def test_relative_sqlite_url_is_made_absolute(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[broker]\ndatabase_url = "sqlite+aiosqlite:///x/y.db"\n'))
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/x/y.db"


def test_environment_overrides_every_kind_of_value(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [ssh]
        listen = "0.0.0.0:2222"
        """)
    config = load(path, BROKER_SSH_LISTEN="127.0.0.1:2022", BROKER_SSH_PROXY_PROTOCOL="true",
                  BROKER_HTTP_LISTEN="[::1]:9443", BROKER_RECORDING_RETAIN_DAYS="30",
                  BROKER_BROKER_DATABASE_URL="postgresql://u@h/db", BROKER_LOG_LEVEL="DEBUG",
                  BROKER_CONFIG="/elsewhere.toml", BROKER_DEBUG="1", BROKER_NOSECTION_X="1")
    s = config.settings
    assert s.ssh.listen == "127.0.0.1:2022"
    assert s.ssh.proxy_protocol is True
    assert s.http.listen == "[::1]:9443"
    assert s.recording.retain_days == 30
    assert config.database_url == "postgresql+asyncpg://u@h/db"
    assert s.log.level == "debug"


def test_environment_is_read_from_os_environ_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_POLICY_DIR", "/opt/pol")
    assert load_config(write(tmp_path, "")).policy_dir == Path("/opt/pol")


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_CONFIG", raising=False)
    assert config_path(None) == Path("broker.toml")
    monkeypatch.setenv("BROKER_CONFIG", "/etc/broker/broker.toml")
    assert config_path(None) == Path("/etc/broker/broker.toml")
    assert config_path("mine.toml") == Path("mine.toml")


# --- errors: one line, naming the file (or variable) and the key -----------------------------

@pytest.mark.parametrize(("text", "fragments"), [
    ("[ssh]\nlisten = \n", ["not valid TOML", "line 2"]),
    ("[ssh\nlisten = 'x'\n", ["not valid TOML", "line 1"]),
    ("[nope]\nx = 1\n", ["[nope]", "unknown section"]),
    ("[ssh]\nlistne = '0.0.0.0:22'\n", ["[ssh] listne", "unknown key"]),
    ("[ssh]\nlisten = '2222'\n", ["[ssh] listen", "HOST:PORT", "'2222'"]),
    ("[ssh]\nlisten = 'host:99999'\n", ["[ssh] listen", "HOST:PORT"]),
    ("[http]\nlisten = ':8443'\n", ["[http] listen", "HOST:PORT"]),
    ("[broker]\npublic_url = 'ftp://x.org'\n", ["[broker] public_url", "http(s) URL"]),
    ("[broker]\npublic_url = 'https://'\n", ["[broker] public_url", "http(s) URL"]),
    ("[broker]\ndatabase_url = 'mysql://u@h/db'\n", ["[broker] database_url", "'mysql://u@h/db'"]),
    ("[broker]\ndatabase_url = 'broker.db'\n", ["[broker] database_url", "sqlite:///PATH"]),
    ("[ssh]\nlisten = 2222\n", ["[ssh] listen", "string", "2222"]),
    ("[recording]\nretain_days = 'forever'\n", ["[recording] retain_days", "integer", "forever"]),
    ("[recording]\nretain_days = 0\n", ["[recording] retain_days", "greater than or equal to 1"]),
    ("[ssh]\nproxy_protocol = 'perhaps'\n", ["[ssh] proxy_protocol", "boolean"]),
    ("ssh = 5\n", ["[ssh]", "5"]),
    ("[log]\nlevel = 'verbose'\n", ["[log] level", "debug, info, warning or error", "verbose"]),
    ("[ssh]\nciphers = ['aes128-gcm@openssh.com', 'rot13']\n", ["[ssh] ciphers", "'rot13'"]),
    ("[ssh]\nciphers = []\n", ["[ssh] ciphers", "no cipher given"]),
    ("[ssh]\nproxy_trusted = ['10.0.0.0/33']\n", ["[ssh] proxy_trusted", "CIDR"]),
    ("[broker]\nnode = 'node one'\n", ["[broker] node", "'node one'"]),
    ("[http]\ntls_cert = ''\n", ["[http]", "tls_cert and tls_key must both be set"]),
    ("[http]\nmax_body = 10\n", ["[http] max_body", "greater than or equal to 1024"]),
    ("[ssh]\nlisten = 'x'\nbogus = 1\n[log]\nlevel = 'loud'\n", ["[ssh]", "(and 2 more)"]),
])
def test_bad_file(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(("name", "value", "fragments"), [
    ("BROKER_SSH_LISTEN", "nonsense", ["[ssh] listen", "HOST:PORT", "'nonsense'"]),
    ("BROKER_HTTP_LISTEN", "0.0.0.0:http", ["[http] listen"]),
    ("BROKER_LOG_LEVEL", "chatty", ["[log] level", "chatty"]),
    ("BROKER_RECORDING_RETAIN_DAYS", "ten", ["[recording] retain_days", "ten"]),
    ("BROKER_SSH_LISTN", "0.0.0.0:22", ["[ssh] listn", "unknown key"]),
    ("BROKER_BROKER_DATABASE_URL", "oracle://x", ["[broker] database_url"]),
])
def test_bad_environment_override_names_the_variable(tmp_path: Path, name: str, value: str,
                                                     fragments: list[str]) -> None:
    message = error_of(write(tmp_path, ""), **{name: value})
    assert message.startswith(f"{name} (environment): "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_file_error_is_blamed_on_the_file_when_env_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nlevel = 'loud'\n")
    message = error_of(path, BROKER_SSH_LISTEN="127.0.0.1:22")
    assert message.startswith(str(path)) and "[log] level" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "broker.toml"
    message = error_of(path)
    assert message.startswith(str(path)) and "no such file" in message
    assert "broker init" in message


def test_missing_file_names_broker_config_when_it_chose_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = error_of(path, BROKER_CONFIG=str(path))
    assert f"from BROKER_CONFIG={path}" in message and "--config PATH" in message
    assert "from BROKER_CONFIG" not in error_of(path, BROKER_CONFIG=str(tmp_path / "other"))


def test_a_directory_means_its_broker_toml(tmp_path: Path) -> None:
    message = error_of(tmp_path)  # a directory without a broker.toml
    assert message.startswith(str(tmp_path / "broker.toml")) and "no such file" in message
    write(tmp_path, "[ssh]\nlisten = '127.0.0.1:2022'\n")
    assert load(tmp_path).settings.ssh.listen == "127.0.0.1:2022"


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")  # a file where a directory should be
    message = error_of(tmp_path / "plain" / "broker.toml")
    assert "cannot read" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_bytes(b"[ssh]\nlisten = '\xff\xfe'\n")
    message = error_of(path)
    assert message.startswith(str(path))


def test_value_with_newline_is_echoed_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nlevel = "a\\nb"\n')
    assert "[log] level" in error_of(path)


def test_drain_timeout_defaults_to_five_minutes_and_is_checked(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")).settings.broker.drain_timeout == "5m"
    assert load(write(tmp_path, "[broker]\ndrain_timeout = \"30s\"\n")).settings.broker \
        .drain_timeout == "30s"
    message = error_of(write(tmp_path, "[broker]\ndrain_timeout = \"soon\"\n"))
    assert "drain_timeout" in message and "'soon' is not a duration" in message
    assert "drain_timeout" in error_of(write(tmp_path, ""), BROKER_BROKER_DRAIN_TIMEOUT="2d")
