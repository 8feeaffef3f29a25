"""/readyz: 200 only when the database answers at the current migration, every key is
readable, the recordings directory takes writes and the node is not draining; otherwise 503
with one line per problem, and never a path."""

from __future__ import annotations

import shutil
from pathlib import Path

from broker.http.keys import NODE
from tests.web_kit import portal


async def _ready(client) -> tuple[int, dict]:
    response = await client.get("/readyz")
    return response.status, await response.json()


async def test_ready_then_each_problem_named(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        assert await _ready(client) == (200, {"ready": True, "problems": [],
                                              "node": ctx.node})
        recordings = ctx.config.recordings_dir
        shutil.rmtree(recordings)
        recordings.write_text("not a directory")
        (broker_dir / "data" / "vault.key").unlink()
        client.app[NODE].draining = True
        status, body = await _ready(client)
        assert status == 503 and body["ready"] is False
        assert body["problems"] == [
            "draining: this node is shutting down and takes no new sessions",
            "keys: the vault key is not readable (No such file or directory)",
            "recordings: the directory does not take writes (Not a directory)"]
        assert str(broker_dir) not in str(body)


async def test_a_database_behind_the_code_is_not_ready(broker_dir: Path) -> None:
    (broker_dir / "data" / "broker.db").unlink()  # SQLite makes a new, empty one
    async with portal(broker_dir) as (client, _ctx):
        status, body = await _ready(client)
        assert status == 503
        (problem,) = body["problems"]
        assert problem.startswith("database: schema at nothing, this broker needs ")
        assert "run 'broker migrate'" in problem
