"""Serving the application on ``[http] listen``, over TLS unless the certificate is unset."""

from __future__ import annotations

import ssl

from aiohttp import web

from broker.config import Config
from broker.credentials.keys import KeyPaths
from broker.errors import ConfigError


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def tls_context(config: Config) -> ssl.SSLContext | None:
    keys = KeyPaths.of(config)
    if keys.tls_cert is None or keys.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(keys.tls_cert, keys.tls_key)
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: the TLS certificate or key is missing "
                          "(run 'broker init')") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[http] tls_cert/tls_key: cannot load them: {exc}") from None
    return context


class WebSite:
    """The running HTTP(S) listener."""

    def __init__(self, app: web.Application, config: Config) -> None:
        self.app = app
        self.config = config
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0
        self.tls = False

    async def start(self) -> None:
        listen = self.config.settings.http.listen
        host, port = split_listen(listen)
        context = tls_context(self.config)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host or None, port, ssl_context=context,
                           reuse_address=True, shutdown_timeout=2)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise ConfigError(f"[http] listen = {listen!r}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        self.port = self.runner.addresses[0][1]
        self.tls = context is not None

    async def close(self) -> None:
        await self.runner.cleanup()
