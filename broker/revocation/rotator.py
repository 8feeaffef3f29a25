"""Runs due credential rotations in the background: wakes when the next one falls due (or a
lease held by another node runs out), not on a polling tick, and re-plans when told that
something changed (a grant ended here or on another node)."""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from broker.credentials.rotation import Outcome, rotate_due
from broker.revocation.deadlines import DeadlineLoop
from broker.services import rotations

MAX_SLEEP = timedelta(minutes=10)
MIN_SLEEP = timedelta(seconds=1)
log = structlog.get_logger("broker.rotator")


class Rotator(DeadlineLoop):
    retry_after = timedelta(minutes=1)

    async def tick(self) -> datetime:
        """Rotate every due device (one at a time); returns when the next round is due."""
        for device_id in await rotations.due_devices(self.ctx):
            if await rotations.postpone_while_closing(self.ctx, device_id):
                continue
            outcome = await self._rotate(device_id)
            if outcome is not None:
                log.info("rotation round", device=outcome.device, ok=outcome.ok)
        now = self.ctx.now()
        upcoming = await rotations.next_due(self.ctx)
        latest = now + MAX_SLEEP
        return max(now + MIN_SLEEP, min(upcoming, latest) if upcoming else latest)

    async def _rotate(self, device_id: int) -> Outcome | None:
        try:
            return await rotate_due(self.ctx, device_id)
        except Exception as exc:  # recorded with back-off by rotate_due where it can be
            log.error("rotation failed", device_id=device_id, error=str(exc))
            return None
