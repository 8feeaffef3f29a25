"""``[broker] event_loop``: uvloop by default, asyncio's own loop on request, anything else
one line naming the key; ``run_event_loop`` really runs the server on the chosen loop."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import pytest

from broker.config import settings_from
from broker.errors import ConfigError
from broker.server import GIL_SWITCH_INTERVAL, run_event_loop, settle_heap

WHERE = Path("/etc/broker/broker.toml")


@pytest.mark.parametrize(("raw", "environ", "expected"), [
    ({}, {}, "uvloop"),
    ({"broker": {"event_loop": "asyncio"}}, {}, "asyncio"),
    ({"broker": {"event_loop": "asyncio"}}, {"BROKER_BROKER_EVENT_LOOP": "uvloop"}, "uvloop"),
])
def test_values_taken(raw: dict, environ: dict[str, str], expected: str) -> None:
    assert settings_from(raw, environ, WHERE).settings.broker.event_loop == expected


@pytest.mark.parametrize("value", ["trio", "UVLOOP", "", 1])
def test_bad_values_name_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from({"broker": {"event_loop": value}}, {}, WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: [broker] event_loop: ") and "\n" not in message


@pytest.mark.parametrize(("choice", "module"), [("uvloop", "uvloop"),
                                                ("asyncio", "asyncio.unix_events")])
def test_the_server_runs_on_the_chosen_loop(choice: str, module: str) -> None:
    seen: list[object] = []

    async def main() -> None:
        seen.extend([type(asyncio.get_running_loop()).__module__, sys.getswitchinterval()])

    before = sys.getswitchinterval()
    try:
        run_event_loop(main(), choice)
    finally:
        sys.setswitchinterval(before)
    # the GIL is handed over less often than Python's 5 ms (see GIL_SWITCH_INTERVAL)
    assert seen == [module, pytest.approx(GIL_SWITCH_INTERVAL)] and GIL_SWITCH_INTERVAL > 0.005


def test_a_settled_heap_is_out_of_the_collectors_reach() -> None:
    gc.unfreeze()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # this test process's modules, classes, ...
        assert gc.get_count()[2] == 0  # after the full collection it made first
    finally:
        gc.unfreeze()
