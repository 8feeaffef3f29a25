"""The strict scp parser against a real POSIX shell (issue #16: an scp-only grant ran any
command). What the broker builds must reach the device's shell as exactly one path; whatever
it accepts as scp must mean to a real shell what it means to the parser; a second command or
any shell construct makes a command not scp."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker.domain.scp_command import (
    NotScp,
    ScpCommand,
    build,
    parse,
    parse_or_none,
    split_words,
)

SHELLS = [sh for sh in ("/bin/sh", shutil.which("bash"), shutil.which("dash")) if sh]

# Printable text (any script) and spaces: what a path may hold.
paths = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cf", "Zl", "Zp",
                                                                  "Co", "Cn")),
                min_size=1, max_size=40).filter(lambda p: all(c == " " or c.isprintable()
                                                              for c in p))
commands = st.builds(ScpCommand, upload=st.booleans(), path=paths, recursive=st.booleans(),
                     preserve=st.booleans(), must_be_dir=st.booleans(), verbose=st.booleans())


def shell_words(shell: str, command: str) -> list[str]:
    """The words a real shell passes to ``scp`` when it runs ``command`` (scp is a function
    printing its arguments; HOME is '.' so that '~' reads as the broker reads it)."""
    script = 'scp() { printf "%s\\0" scp "$@"; }\n' + command
    run = subprocess.run([shell, "-c", script], capture_output=True, timeout=10,
                         env={"PATH": os.environ["PATH"], "HOME": ".", "LC_ALL": "C.UTF-8"})
    assert run.returncode == 0, run.stderr
    return run.stdout.decode("utf-8").split("\0")[:-1]


def expected_words(cmd: ScpCommand) -> list[str]:
    return ["scp", cmd.flags, "--", cmd.path]


@pytest.mark.parametrize("shell", SHELLS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmd=commands)
def test_built_command_reaches_the_shell_as_exactly_one_path(shell: str, cmd: ScpCommand
                                                             ) -> None:
    assert shell_words(shell, build(cmd)) == expected_words(cmd)


@settings(max_examples=500)
@given(cmd=commands)
def test_parse_of_build_is_identity(cmd: ScpCommand) -> None:
    assert parse(build(cmd)) == cmd


INJECTIONS = [";", "&", "&&", "||", "|", "\n", "\r", "$(", "`", ">", ">>", "<", "#", "${",
              "$HOME", "\0", "*", "?", "[a]", "{a,b}", "(", ")", "!", "\t", "~root", "\\\n",
              "'", '"']
SECOND = ["id", "touch /tmp/pwned", "exec bash -i", "sh", " id", "x"]


@settings(max_examples=400)
@given(cmd=commands, injection=st.sampled_from(INJECTIONS), second=st.sampled_from(SECOND),
       glue=st.sampled_from(["", " "]))
def test_a_second_command_or_shell_construct_is_not_scp(cmd: ScpCommand, injection: str,
                                                        second: str, glue: str) -> None:
    assert parse_or_none(build(cmd) + glue + injection + second) is None


@settings(max_examples=300)
@given(cmd=commands, prefix=st.sampled_from([
    "/usr/bin/scp", "/tmp/evil/scp", "./scp", "exec scp", "X=1 scp", "env scp", "sh -c scp",
    "command scp", "nice scp", "SCP", "scp.exe", "\\scp", "'scp'x", "scp;"]))
def test_argv0_must_be_exactly_scp(cmd: ScpCommand, prefix: str) -> None:
    assert parse_or_none(prefix + build(cmd)[3:]) is None


@pytest.mark.parametrize("command", [
    "scp -t /tmp/x; id", "scp -t /tmp/x && id", "scp -t /tmp/x || id", "scp -t x | id",
    "scp -t $(id)", "scp -t `id`", "scp -t x\nid", "scp -t x > /tmp/y", "scp -t a b",
    "scp -S /tmp/evil -t x", "scp -o ProxyCommand=id -t x", "scp -t -f x", "scp -r x",
    "scp -t", "scp -t ''", "scp -t \"$HOME\"", "scp -t x #c", "scp -t 'a\nb'", "scp -t a\\",
    "scp -t 'open", "scp -t -- a b", "scp -t *", "scp -t ~root/x", "scp -tt x",
    "scp -t x\0", "scp\t-t x", "scp -t \"a\\\"b\"",
])
def test_known_attacks_are_not_scp(command: str) -> None:
    with pytest.raises(NotScp):
        parse(command)


@pytest.mark.parametrize("command,path", [
    ("scp -t /tmp/x", "/tmp/x"),
    ("scp -v -r -p -d -t -- /tmp/dir", "/tmp/dir"),
    ("scp -rpt 'with space'", "with space"),
    ("scp -f \"it's\"", "it's"),
    ("scp -f 'it'\\''s'", "it's"),
    ("scp -t with\\ space", "with space"),
    ("scp -t ~/up", "./up"),
    ("scp -t .", "."),
    ("scp -t -- -dash", "-dash"),
    ("scp -t 'a;b $(c)'", "a;b $(c)"),
])
def test_plain_scp_is_scp(command: str, path: str) -> None:
    assert parse(command).path == path


# Alphabet for commands that might or might not parse: quotes, escapes, spaces, safe text.
_PIECES = st.sampled_from(["a", "b", " ", "'", '"', "\\", "-", "/", ".", "~", "~/", "é", ";",
                           "$", "=", "\\ ", "''", '""', "x y", "--", "-t", "-f", "-r"])


@pytest.mark.parametrize("shell", SHELLS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.filter_too_much])
@given(rest=st.lists(_PIECES, max_size=10).map("".join))
def test_whatever_parses_means_the_same_to_a_real_shell(shell: str, rest: str) -> None:
    command = "scp -t " + rest
    cmd = parse_or_none(command)
    assume(cmd is not None)
    assert cmd is not None
    assert shell_words(shell, command) == split_words(command)
    assert shell_words(shell, command)[-1] == cmd.path
