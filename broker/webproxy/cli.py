"""``broker device web NAME ...``: how the broker reaches a device's web UI."""

from __future__ import annotations

import click

from broker.cli._base import actor, common, emit, fields, run
from broker.services import device_web as web_settings
from broker.services.device_web import AUTH_KINDS, WebOptions, read_ca


@click.command("web")
@click.argument("name")
@click.option("--url", default=None, help="the device's web UI, e.g. https://10.0.0.7/")
@click.option("--ca", "ca_file", metavar="FILE", default=None,
              help="trust only this CA (PEM) for the device's HTTPS certificate")
@click.option("--pin-sha256", metavar="HEX", default=None,
              help="accept exactly the certificate with this SHA-256 (of its DER bytes)")
@click.option("--insecure-http/--no-insecure-http", default=None,
              help="allow a plain http:// web URL (the device has nothing better)")
@click.option("--auth", type=click.Choice(AUTH_KINDS), default=None,
              help="how the broker logs in with the vaulted password")
@click.option("--form-path", default=None, help="--auth form: where the login form posts")
@click.option("--form-user-field", default=None, help="--auth form: user name field")
@click.option("--form-password-field", default=None, help="--auth form: password field")
@common()
def device_web(name: str, url: str | None, ca_file: str | None, pin_sha256: str | None,
               insecure_http: bool | None, auth: str | None, form_path: str | None,
               form_user_field: str | None, form_password_field: str | None,
               config_file: str | None, as_json: bool) -> None:
    """Show or set how the broker reaches DEVICE's web UI (no option: show)."""
    options = WebOptions(url=url, ca_pem=read_ca(ca_file) if ca_file else None,
                         pin_sha256=pin_sha256, insecure_http=insecure_http, auth=auth,
                         form_path=form_path, form_user_field=form_user_field,
                         form_password_field=form_password_field)
    changing = any(v is not None for v in vars(options).values())
    if changing:
        device, current = run(config_file, lambda ctx: web_settings.configure(
            ctx, actor(), name, options))
    else:
        device, current = run(config_file, lambda ctx: web_settings.show(ctx, name))
    data = web_settings.describe(device, current)
    emit(as_json, data, lambda: fields([(k.replace("_", " "), v) for k, v in data.items()]))
