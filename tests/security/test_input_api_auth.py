"""The API's failed-login limiter throttles failures, never a valid credential: a flood of
bad tokens from one address (every client behind one proxy) does not lock out the valid
tokens coming from that same address, while the bad ones keep getting 429."""

from __future__ import annotations

from pathlib import Path

from broker.services.api_tokens import authenticate
from broker.testing import FakeClock
from tests.unit.api_kit import seed
from tests.web_kit import portal


async def test_a_flood_of_bad_tokens_does_not_lock_out_valid_ones(broker_dir: Path) -> None:
    async with portal(broker_dir, clock=FakeClock()) as (client, ctx):  # default limits
        s = await seed(ctx)
        bad = {"Authorization": "Bearer vab_" + "B" * 43}
        statuses = [(await client.get("/api/v1/grants", headers=bad)).status
                    for _ in range(60)]
        assert 401 in statuses and statuses[-10:] == [429] * 10
        throttled = await client.get("/api/v1/grants", headers=bad)
        assert throttled.status == 429 and int(throttled.headers["Retry-After"]) >= 1
        # the same address, a valid token: served at once, for every role
        for role in ("admin", "auditor", "approver"):
            ok = await client.get("/api/v1/grants", headers=s.auth(role))
            assert ok.status == 200, await ok.text()
        # a valid token of the wrong role is a 403, not hidden behind the throttle
        assert (await client.post("/api/v1/requests", json={},
                                  headers=s.auth("auditor"))).status == 403
        # ...and the flood is still throttled, with or without a token
        assert (await client.get("/api/v1/grants", headers=bad)).status == 429
        assert (await client.get("/api/v1/grants")).status == 429
        for _ in range(20):  # valid calls never count against the address
            assert (await client.get("/api/v1/grants", headers=s.auth())).status == 200


async def test_junk_that_is_not_shaped_like_a_token_is_refused_without_a_lookup(
        broker_dir: Path) -> None:
    async with portal(broker_dir, clock=FakeClock()) as (_client, ctx):
        s = await seed(ctx)
        opened = 0
        real = ctx.store.session

        def counting() -> object:
            nonlocal opened
            opened += 1
            return real()

        ctx.store.session = counting  # type: ignore[method-assign]
        try:
            for junk in ("vab_short", "vab_" + "A" * 44, "vab_" + "A" * 42 + "!", "x" * 10_000,
                         "vab_" + "A" * 43 + "\n", ""):
                assert await authenticate(ctx, junk) is None
            assert opened == 0
            assert await authenticate(ctx, "vab_" + "A" * 43) is None and opened == 1
            assert (await authenticate(ctx, s.admin)) is not None
        finally:
            ctx.store.session = real  # type: ignore[method-assign]
