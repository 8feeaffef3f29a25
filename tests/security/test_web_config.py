"""The new web settings ([webproxy], [http] handshake/head timeouts): a bad value is one line
naming the file or variable, the key and what is wrong; a device listener that cannot bind
is one line too."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from broker.config import load_config, settings_from
from broker.errors import ConfigError
from broker.http import WebSite, create_device_app
from broker.http.site import Listener
from broker.services.context import Context
from broker.webproxy.origin import device_base_url, grant_of_host, grant_origin, signin_url
from tests.integration.harness import BROKER

BAD = {
    ("webproxy", "listen", "everywhere"): "expected HOST:PORT",
    ("webproxy", "public_url", "ftp://devices.example"): "expected an http(s) URL",
    ("webproxy", "public_url", "https://devices.example/w/"): "no path",
    ("webproxy", "grant_host", "devices.example"): "first label is {grant}",
    ("webproxy", "grant_host", "{grant}.dev ices.example"): "first label is {grant}",
    ("webproxy", "grant_host", "x{grant}.devices.example"): "first label is {grant}",
    ("webproxy", "tls_cert", "data/devices.crt"): "both be set",
    ("http", "head_timeout", "0s"): "head_timeout",
    ("http", "head_timeout", "soon"): "not a duration",
    ("http", "handshake_timeout", "1h"): "longer than the most allowed",
    ("webproxy", "colour", "blue"): "unknown key",
}


@pytest.mark.parametrize(("where", "expected"), BAD.items(), ids=lambda v: str(v))
def test_bad_values_are_one_clear_line(where: tuple[str, str, str], expected: str) -> None:
    section, key, value = where
    with pytest.raises(ConfigError) as raised:
        settings_from({section: {key: value}}, {}, Path("broker.toml"))
    message = str(raised.value)
    assert "\n" not in message and expected in message, message
    assert message.startswith(f"broker.toml: [{section}]"), message


def test_an_environment_override_is_named(broker_dir: Path) -> None:
    run = subprocess.run([BROKER, "tech", "list", "--config", str(broker_dir / "broker.toml")],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin",
                              "BROKER_WEBPROXY_GRANT_HOST": "devices.example"})
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "BROKER_WEBPROXY_GRANT_HOST (environment): [webproxy] grant_host" in run.stderr


async def test_a_busy_device_port_is_one_line(broker_dir: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config = broker_dir / "broker.toml"
    config.write_text(config.read_text().replace('listen = "0.0.0.0:8444"',
                                                 f'listen = "127.0.0.1:{port}"'))
    ctx = Context.open(load_config(config))
    try:
        site = WebSite(create_device_app(ctx), ctx.config, Listener.devices(ctx.config))
        with pytest.raises(ConfigError, match=r"^\[webproxy\] listen = '127.0.0.1:\d+': cannot"
                                              r" listen: "):
            await site.start()
    finally:
        busy.close()
        await ctx.close()


def test_device_origins_follow_the_settings() -> None:
    plain = settings_from({"broker": {"public_url": "https://broker.example:8443"}}, {},
                          Path("b.toml")).settings
    assert device_base_url(plain) == "https://broker.example:8444"
    assert signin_url(plain, 7, "tok") == "https://broker.example:8444/w/signin/tok"
    per_grant = settings_from({"webproxy": {"public_url": "https://devices.example",
                                            "grant_host": "{grant}.Devices.Example"}}, {},
                              Path("b.toml")).settings
    assert grant_origin(per_grant, 7) == "https://7.devices.example"
    assert grant_of_host(per_grant, "7.devices.example") == 7
    assert grant_of_host(per_grant, "7.DEVICES.example.:443") == 7
    for host in ("devices.example", "07.devices.example", "x7.devices.example",
                 "7.devices.example.evil", "7.x.devices.example", "\uff17.devices.example"):
        assert grant_of_host(per_grant, host) is None, host
