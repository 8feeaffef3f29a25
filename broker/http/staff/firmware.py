"""The firmware card of a device's page: its probe, a drift waiting for acceptance, the
latest readings, and the admin's Accept button (POST, CSRF-checked by ``requires``)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from broker.http.errors import BadInput
from broker.http.keys import CONTEXT
from broker.http.staff.auth import redirect, requires, signed_in
from broker.services import firmware

FINGERPRINT = re.compile(r"[0-9a-f]{64}")



async def firmware_card(request: web.Request, name: str) -> dict[str, Any]:
    """What device.html needs for its firmware card."""
    return {"firmware_history": await firmware.history(request.app[CONTEXT], name),
            "fingerprint": firmware.fingerprint,
            "accepted": request.query.get("done") == "firmware-accepted"}


@requires("firmware")
async def accept(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"][:63]
    form = await request.post()
    seen = form.get("observed")
    if not isinstance(seen, str) or not FINGERPRINT.fullmatch(seen):
        raise BadInput("observed", "observed: the form must name the firmware it accepts"
                                   " (reload the device page)")
    await firmware.accept(request.app[CONTEXT], signed_in(request).actor, name, seen=seen)
    return redirect(f"/staff/devices/{quote(name, safe='')}?done=firmware-accepted")


def setup(app: web.Application) -> None:
    app.router.add_post("/staff/devices/{name}/firmware/accept", accept)
