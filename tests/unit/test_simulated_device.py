"""The simulated device (broker.demo) driven by an in-process asyncssh client."""

from __future__ import annotations

import asyncio
import stat
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from broker.aio import within
from broker.demo import DeviceIdentity, SimulatedDevice, deterministic_bytes, start_simulated_device

PASSWORD = "s3rvice-pw"
BANNER = "Infusomat Space P \u2014 service console, firmware 4.2.1, SN-00417"
PROMPT = b"pump-7> "
TIMEOUT = 10


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def device(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[SimulatedDevice]:
    authorized = client_key.export_public_key("openssh").decode()
    dev = await start_simulated_device(
        tmp_path / "device", password=PASSWORD, authorized_keys=authorized
    )
    yield dev
    await dev.close()


@asynccontextmanager
async def connect(
    dev: SimulatedDevice,
    *,
    password: str | None = PASSWORD,
    username: str | None = None,
    client_keys: list[asyncssh.SSHKey] | None = None,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    async with asyncssh.connect(
        dev.host,
        dev.port,
        username=username or dev.username,
        password=password,
        client_keys=client_keys,
        known_hosts=None,
        agent_path=None,
    ) as conn:
        yield conn


@dataclass
class Result:
    stdout: str
    stderr: str
    exit_status: int | None


async def run(dev: SimulatedDevice, command: str, stdin: str | None = None) -> Result:
    async with connect(dev) as conn:
        done = await within(TIMEOUT, conn.run(command, input=stdin))
    return Result(str(done.stdout), str(done.stderr), done.exit_status)


async def read_until(stream: asyncssh.SSHReader[bytes], marker: bytes) -> bytes:
    return await within(TIMEOUT, stream.readuntil(marker))


# ---------------------------------------------------------------- start-up and login


async def test_port_zero_picks_a_free_port_and_root_is_seeded(device: SimulatedDevice) -> None:
    assert device.port > 0
    for name in ("logs/pump.log", "config/pump.conf", "firmware/VERSION"):
        assert (device.root / name).is_file()
    assert "rate_limit_ml_h = 1200" in (device.root / "config/pump.conf").read_text()


async def test_seeding_keeps_existing_files(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config/pump.conf").write_text("alarm_volume = 2\n")
    async with await start_simulated_device(tmp_path, password=PASSWORD) as dev:
        result = await run(dev, "config show")
    assert result.stdout == "alarm_volume = 2\n"


async def test_password_login(device: SimulatedDevice) -> None:
    result = await run(device, "whoami")
    assert (result.stdout, result.stderr, result.exit_status) == ("service\n", "", 0)


@pytest.mark.parametrize(("username", "password"), [("service", "wrong"), ("root", PASSWORD)])
async def test_wrong_credentials_refused(
    device: SimulatedDevice, username: str, password: str
) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(device, username=username, password=password):
            pass
    assert "login failed" in (device.root / "logs/pump.log").read_text()


async def test_key_login(device: SimulatedDevice, client_key: asyncssh.SSHKey) -> None:
    async with connect(device, password=None, client_keys=[client_key]) as conn:
        assert (await conn.run("whoami")).stdout == "service\n"
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(device, password=None, client_keys=[stranger]):
            pass
    with pytest.raises(asyncssh.PermissionDenied):  # right key, wrong account
        async with connect(device, username="root", password=None, client_keys=[client_key]):
            pass


async def test_host_key_generated_0600_and_reused(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "device_host_key"
    async with await start_simulated_device(
        tmp_path / "root", password=PASSWORD, host_key_path=key_path
    ) as first:
        public = first.host_public_key
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert public.startswith("ssh-ed25519 ")
    async with await start_simulated_device(
        tmp_path / "root", password=PASSWORD, host_key_path=key_path
    ) as second:
        assert second.host_public_key == public
        no_keys: list[asyncssh.SSHKey] = []
        pinned = ([asyncssh.import_public_key(public)], no_keys, no_keys)
        async with asyncssh.connect(
            second.host,
            second.port,
            username="service",
            password=PASSWORD,
            known_hosts=pinned,
            client_keys=None,
            agent_path=None,
        ) as conn:
            assert (await conn.run("hostname")).stdout == "pump-7\n"


async def test_custom_identity(tmp_path: Path) -> None:
    ident = DeviceIdentity(name="lab-3", model="Cobas 6000", firmware="1.0", serial="SN-9")
    async with await start_simulated_device(tmp_path, password=PASSWORD, identity=ident) as dev:
        result = await run(dev, "status")
    assert "lab-3 (Cobas 6000, SN-9)" in result.stdout
    assert "firmware:  1.0" in result.stdout


# ---------------------------------------------------------------- exec commands


async def test_exec_status(device: SimulatedDevice) -> None:
    result = await run(device, "status")
    assert result.exit_status == 0
    assert result.stderr == ""
    for field in (
        "device:    pump-7",
        "firmware:  4.2.1",
        "state:",
        "battery:   87 %",
        "uptime:    3 days",
        "alarms:    none",
    ):
        assert field in result.stdout


async def test_exec_exit_statuses(device: SimulatedDevice) -> None:
    assert (await run(device, "false")).exit_status == 1
    assert (await run(device, "true")).exit_status == 0
    assert (await run(device, "exit 3")).exit_status == 3
    assert (await run(device, "exit")).exit_status == 0


async def test_unknown_command_127(device: SimulatedDevice) -> None:
    result = await run(device, "frobnicate --now")
    assert result.exit_status == 127
    assert result.stdout == ""
    assert result.stderr == "frobnicate: command not found\n"


async def test_pipes_and_redirection_are_refused(device: SimulatedDevice) -> None:
    result = await run(device, "echo 'service:x' | chpasswd")
    assert result.exit_status == 2
    assert "not supported" in result.stderr
    assert device.password == PASSWORD
    assert (await run(device, "echo 'a | b' \"c > d\"")).stdout == "a | b c > d\n"


async def test_logs_and_config(device: SimulatedDevice) -> None:
    logs = await run(device, "logs")
    assert len(logs.stdout.splitlines()) == 10
    assert logs.stdout.splitlines()[-1].endswith("login service from 127.0.0.1")
    assert len((await run(device, "logs 3")).stdout.splitlines()) == 3

    changed = await run(device, "config set rate_limit_ml_h 900")
    assert (changed.exit_status, changed.stdout) == (0, "rate_limit_ml_h = 900\n")
    assert "rate_limit_ml_h = 900\n" in (await run(device, "config show")).stdout
    assert "rate_limit_ml_h = 900" in (device.root / "config/pump.conf").read_text()
    assert "config changed" in (await run(device, "logs 20")).stdout

    unknown = await run(device, "config set no_such_key 1")
    assert unknown.exit_status == 1
    assert "unknown key" in unknown.stderr


async def test_cat_ls_cd_stay_inside_root(device: SimulatedDevice, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("outside")
    (device.root / "escape").symlink_to(tmp_path)
    assert (await run(device, "cat firmware/VERSION")).stdout.startswith("Infusomat Space P")
    assert (await run(device, "cat /firmware/../firmware/VERSION")).exit_status == 0
    listing = (await run(device, "ls")).stdout.splitlines()
    assert {"config/", "firmware/", "logs/"} <= set(listing)

    for command in (
        "cat ../../etc/passwd",
        "cat ../secret.txt",
        "cat escape/secret.txt",
        "ls ..",
        "cd ..",
    ):
        result = await run(device, command)
        assert result.exit_status == 1, command
        assert "Permission denied" in result.stderr, command
        assert "outside" not in result.stdout

    missing = await run(device, "cat nope.txt")
    assert (missing.exit_status, missing.stderr) == (
        1,
        "cat: nope.txt: No such file or directory\n",
    )


async def test_seq_bytes_sleep(device: SimulatedDevice) -> None:
    assert (await run(device, "seq 5")).stdout == "1\n2\n3\n4\n5\n"
    async with connect(device) as conn:
        big = await within(TIMEOUT, conn.run("bytes 300000", encoding=None))
    assert big.stdout == deterministic_bytes(300000)
    assert big.exit_status == 0
    started = time.monotonic()
    assert (await run(device, "sleep 0.3")).exit_status == 0
    assert time.monotonic() - started >= 0.3
    assert (await run(device, "sleep soon")).exit_status == 1


async def test_client_leaving_mid_command_does_not_hurt(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process = await conn.create_process("sleep 30")
        await asyncio.sleep(0.1)
        process.close()
    assert (await run(device, "whoami")).stdout == "service\n"


async def test_sessions_started_counts_every_channel(device: SimulatedDevice) -> None:
    before = device.sessions_started
    async with connect(device) as conn:
        await conn.run("true")
        await conn.run("true")
        async with conn.start_sftp_client():
            pass
    assert device.sessions_started == before + 3


# ---------------------------------------------------------------- interactive shell


async def open_shell(
    conn: asyncssh.SSHClientConnection, size: tuple[int, int] = (80, 24)
) -> tuple[asyncssh.SSHClientProcess[bytes], bytes]:
    process = await conn.create_process(term_type="xterm", term_size=size, encoding=None)
    greeting = await read_until(process.stdout, PROMPT)
    return process, greeting


async def test_interactive_shell(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process, greeting = await open_shell(conn)
        assert BANNER.encode() in greeting
        process.stdin.write(b"status\r")
        output = await read_until(process.stdout, PROMPT)
        assert output.startswith(b"status\r\n")  # the device echoes what is typed
        assert b"battery:   87 % (on mains, charging)\r\nuptime:" in output
        process.stdin.write(b"exit\r")
        await within(TIMEOUT, process.wait_closed())
        assert process.exit_status == 0


async def test_interactive_line_editing(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process, _ = await open_shell(conn)
        process.stdin.write(b"whoamx\x7fi\r")
        output = await read_until(process.stdout, PROMPT)
        assert output == b"whoamx\b \bi\r\nservice\r\n" + PROMPT
        process.stdin.write(b"rm -rf\x03")
        output = await read_until(process.stdout, PROMPT)
        assert output == b"rm -rf^C\r\n" + PROMPT
        process.stdin.write(b"\x1b[Aecho \xc3\xa9x\x7f\x7f\xc3\xa9\r\n")  # CR LF counts once
        output = await read_until(process.stdout, PROMPT)
        assert output.endswith("\r\n\u00e9\r\n".encode() + PROMPT)
        process.stdin.write(b"exit 4\r")
        await within(TIMEOUT, process.wait_closed())
        assert process.exit_status == 4


async def test_ctrl_d_logs_out(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process, _ = await open_shell(conn)
        process.stdin.write(b"false\r")
        await read_until(process.stdout, PROMPT)
        process.stdin.write(b"\x04")
        await within(TIMEOUT, process.wait_closed())
        assert process.exit_status == 1


async def test_unknown_command_in_shell_goes_to_stderr(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process, _ = await open_shell(conn)
        process.stdin.write(b"reboot\r")
        error = await read_until(process.stderr, b"\n")
        assert error == b"reboot: command not found\r\n"


async def test_window_change_seen_by_size(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process, _ = await open_shell(conn, size=(100, 30))
        process.stdin.write(b"size\r")
        assert (await read_until(process.stdout, PROMPT)).endswith(b"100x30\r\n" + PROMPT)
        process.change_terminal_size(132, 43)
        process.stdin.write(b"size\r")
        assert (await read_until(process.stdout, PROMPT)).endswith(b"132x43\r\n" + PROMPT)


async def test_shell_without_pty_reads_lines(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process = await conn.create_process(encoding=None)
        process.stdin.write(b"echo hi\nwhoami\r\nfalse\n")
        process.stdin.write_eof()
        await within(TIMEOUT, process.wait_closed())
        assert await process.stdout.read() == b"hi\nservice\n"  # no banner, no prompt
        assert process.exit_status == 1


# ---------------------------------------------------------------- passwords


async def test_chpasswd_exec_rotates_password(device: SimulatedDevice) -> None:
    result = await run(device, "chpasswd", stdin="service:N3w-Pass\n")
    assert (result.exit_status, result.stdout, result.stderr) == (0, "", "")
    assert device.password == "N3w-Pass"
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(device, password=PASSWORD):
            pass
    async with connect(device, password="N3w-Pass") as conn:
        assert (await conn.run("whoami")).stdout == "service\n"


async def test_chpasswd_rejects_other_users_and_bad_lines(device: SimulatedDevice) -> None:
    result = await run(device, "chpasswd", stdin="root:x\nservice\n")
    assert result.exit_status == 1
    assert "user 'root' does not exist" in result.stderr
    assert "line 2: missing new password" in result.stderr
    assert device.password == PASSWORD


async def test_passwd_in_interactive_shell(device: SimulatedDevice) -> None:
    async with connect(device) as conn:
        process, _ = await open_shell(conn)
        process.stdin.write(b"passwd\r")
        await read_until(process.stdout, b"New password: ")
        process.stdin.write(b"fresh-1\r")
        prompt = await read_until(process.stdout, b"Retype new password: ")
        assert b"fresh-1" not in prompt  # not echoed
        process.stdin.write(b"fresh-1\r")
        output = await read_until(process.stdout, PROMPT)
        assert b"password updated" in output
        assert b"fresh-1" not in output
    assert device.password == "fresh-1"
    async with connect(device, password="fresh-1"):
        pass


async def test_passwd_mismatch_keeps_password(device: SimulatedDevice) -> None:
    result = await run(device, "passwd", stdin="one\ntwo\n")
    assert result.exit_status == 1
    assert "do not match" in result.stderr
    assert device.password == PASSWORD


async def test_set_password(device: SimulatedDevice) -> None:
    device.set_password("rotated")
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(device):
            pass
    async with connect(device, password="rotated"):
        pass


# ---------------------------------------------------------------- SFTP and SCP


async def test_sftp_put_get_listdir_rename_remove(device: SimulatedDevice, tmp_path: Path) -> None:
    local = tmp_path / "update.bin"
    local.write_bytes(deterministic_bytes(70000))
    async with connect(device) as conn, conn.start_sftp_client() as sftp:
        assert {"config", "firmware", "logs"} <= set(await sftp.listdir("/"))
        await sftp.put(str(local), "/firmware/update.bin")
        assert (device.root / "firmware/update.bin").read_bytes() == local.read_bytes()
        await sftp.rename("/firmware/update.bin", "/firmware/update-4.3.0.bin")
        assert "update-4.3.0.bin" in await sftp.listdir("/firmware")
        fetched = tmp_path / "fetched.bin"
        await sftp.get("/firmware/update-4.3.0.bin", str(fetched))
        assert fetched.read_bytes() == local.read_bytes()
        await sftp.remove("/firmware/update-4.3.0.bin")
        assert not (device.root / "firmware/update-4.3.0.bin").exists()


async def test_sftp_cannot_escape_root(device: SimulatedDevice, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("host file")
    async with connect(device) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.realpath("../../..") == "/"
        assert not await sftp.exists("../../etc/passwd")
        assert not await sftp.exists("../outside.txt")
        async with sftp.open("../../planted.txt", "w") as handle:
            await handle.write("x")
    assert (device.root / "planted.txt").exists()
    assert not (tmp_path / "planted.txt").exists()


async def test_scp_against_device(device: SimulatedDevice, tmp_path: Path) -> None:
    local = tmp_path / "notes.txt"
    local.write_text("service visit\n")
    async with connect(device) as conn:
        await asyncssh.scp(str(local), (conn, "logs/notes.txt"))
        await asyncssh.scp((conn, "config/pump.conf"), str(tmp_path / "pump.conf"))
    assert (device.root / "logs/notes.txt").read_text() == "service visit\n"
    assert (tmp_path / "pump.conf").read_text() == (device.root / "config/pump.conf").read_text()


async def test_sftp_session_ends_with_exit_status_0(device: SimulatedDevice) -> None:
    # stock OpenSSH `scp` (SFTP mode) fails a transfer whose channel ends without one
    async with connect(device) as conn:
        process = await conn.create_process(subsystem="sftp", encoding=None)
        process.stdin.write(struct.pack(">IBI", 5, 1, 3))  # SSH_FXP_INIT, version 3
        (length,) = struct.unpack(">I", await process.stdout.readexactly(4))
        assert (await process.stdout.readexactly(length))[0] == 2  # SSH_FXP_VERSION
        process.stdin.write_eof()
        await within(TIMEOUT, process.wait_closed())
        assert process.exit_status == 0


async def test_key_only_device_refuses_passwords_until_one_is_set(
    tmp_path: Path, client_key: asyncssh.SSHKey
) -> None:
    authorized = client_key.export_public_key("openssh").decode()
    async with await start_simulated_device(tmp_path, authorized_keys=authorized) as dev:
        assert dev.password is None
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(dev, password=""):
                pass
        dev.set_password("first")
        async with connect(dev, password="first") as conn:
            assert (await conn.run("whoami")).stdout == "service\n"
