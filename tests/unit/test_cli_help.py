"""`broker --help` is grouped by task with examples, every option explains itself, and a
mistyped command gets one line with the nearest command."""

from __future__ import annotations

import click
import pytest

from broker.cli import COMMANDS, TASKS, cli


def _leaves(group: click.Group, ctx: click.Context, path: list[str]):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _leaves(command, ctx, [*path, name])
        else:
            yield " ".join([*path, name]), command


def test_every_command_and_option_has_help() -> None:
    ctx = click.Context(cli)
    missing = []
    for path, command in _leaves(cli, ctx, []):
        if not (command.help or command.short_help):
            missing.append(f"{path}: no help")
        missing += [f"{path} {param.opts[0]}: no help" for param in command.params
                    if isinstance(param, click.Option) and not param.hidden and not param.help]
    assert missing == []


def test_help_lists_every_command_once_under_a_task(broker_run) -> None:
    grouped = [name for _, names, _ in TASKS for name in names]
    assert sorted(grouped) == sorted(COMMANDS)  # none left out, none twice
    result = broker_run(["--help"])
    assert result.code == 0
    for title, names, example in TASKS:
        section = result.out.split(f"{title}:\n", 1)[1].split("\n\n", 1)[0]
        assert all(f"  {name} " in section for name in names), title
        assert f"e.g. {example}" in section


@pytest.mark.parametrize(("argv", "line"), [
    (["grnt"], "broker: no such command 'grnt' (did you mean 'grant'?); see 'broker --help'"),
    (["tech", "lst"],
     "broker: tech: no such command 'lst' (did you mean 'list'?); see 'broker tech --help'"),
    (["recordings", "zzz"], "broker: recordings: no such command 'zzz'; see"
     " 'broker recordings --help'"),
])
def test_mistyped_command_is_one_line_with_a_suggestion(broker_run, argv, line) -> None:
    result = broker_run(argv)
    assert result.code == 2
    assert result.err_lines == [line]
