"""Setting up an install: ``broker.toml``, every key and directory, the database schema."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from broker.approvals.notify.channels import create_webhook_secret
from broker.config import DEFAULT_CONFIG, Config, load_config, render_default_config
from broker.credentials.files import write_public
from broker.credentials.keys import KeyPaths, create_keys
from broker.store.engine import Store


def initialise(directory: Path, public_url: str | None = None,
               say: Callable[[str], None] = lambda _text: None) -> Config:
    """Write broker.toml and create every missing key and directory (the database is
    created by :func:`migrate_database`)."""
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / DEFAULT_CONFIG
    url = public_url or f"https://{socket.getfqdn() or 'localhost'}:8443"
    if write_public(config_file, render_default_config(url).encode()):
        say(f"wrote {config_file}")
    else:
        say(f"kept existing {config_file}")
    config = load_config(config_file)
    kept = config.settings.broker.public_url
    if public_url is not None and public_url.rstrip("/") != kept.rstrip("/"):
        say(f"note: public_url stays {kept!r} (from {config_file}); to change it, edit"
            f" [broker] public_url there or set BROKER_BROKER_PUBLIC_URL")
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.recordings_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    config.policy_dir.mkdir(parents=True, exist_ok=True)
    hostname = urlsplit(config.settings.broker.public_url).hostname or "localhost"
    for path in create_keys(KeyPaths.of(config), hostname):
        say(f"created {path}")
    if (webhook_key := create_webhook_secret(config)) is not None:
        say(f"created {webhook_key}")
    return config


async def migrate_database(url: str) -> None:
    store = Store(url)
    try:
        await store.migrate()
    finally:
        await store.close()


def store_display_url(url: str) -> str:
    """The database URL as it may be shown (no password)."""
    return Store(url).display_url
