"""Typed application keys shared by the portal's modules."""

from __future__ import annotations

from aiohttp import web

from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.readiness import NodeState
from broker.services.refusals import RefusalLog

CONTEXT = web.AppKey("context", Context)
LIVE_SESSIONS = web.AppKey("live_sessions", LiveSessions)
REFUSALS = web.AppKey("refusals", RefusalLog)  # every refusal, rate-limited per source
# the [http] secret_key: use broker.credentials.keys.subkey(), never raw
SECRET = web.AppKey("secret", bytes)
NODE = web.AppKey("node", NodeState)  # draining or not: /readyz answers 503 while draining
