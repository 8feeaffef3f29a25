"""A real OpenLDAP ``slapd`` for the directory-group tests, started in a temp dir.

Its own ``slapd.conf`` (mdb database, suffix dc=hospital,dc=test, the memberof overlay so user
entries carry ``memberOf`` like Active Directory's), plain LDAP and LDAPS on loopback ports,
StartTLS on the plain port, with a test CA and server certificate made with ``cryptography``.
Entries are loaded and changed with the stock ``ldapadd``/``ldapmodify`` clients.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.harness import free_port, wait_for_port

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")
SUFFIX = "dc=hospital,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "slapd-admin-secret"
READER_DN = f"cn=broker,ou=services,{SUFFIX}"
READER_PASSWORD = "reader-secret-0600"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"


def need_slapd() -> None:
    if not Path(SLAPD).exists() or shutil.which("ldapadd") is None:
        pytest.fail("OpenLDAP is not installed: run scripts/system-deps.sh (slapd, ldap-utils)")


def group_dn(name: str) -> str:
    return f"cn={name},{GROUPS}"


def user_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


# -- a test CA and the server's certificate --------------------------------------------------
def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_tls(root: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """``(ca.pem, server.pem, server.key)``: the server certificate names ``host``."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("broker test LDAP CA"))
          .issuer_name(_name("broker test LDAP CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    paths = root / "ca.pem", root / "server.pem", root / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


# -- slapd ---------------------------------------------------------------------------------------
@dataclass
class Slapd:
    root: Path
    port: int = 0
    tls_port: int = 0
    proc: subprocess.Popen | None = None
    ca: Path = field(init=False)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def _config(self, cert: Path, key: Path) -> str:
        schemas = "".join(f"include {SCHEMA / name}.schema\n"
                          for name in ("core", "cosine", "inetorgperson", "nis"))
        return schemas + textwrap.dedent(f"""\
            pidfile {self.root / 'slapd.pid'}
            modulepath {MODULES}
            moduleload back_mdb
            moduleload memberof
            TLSCACertificateFile {self.ca}
            TLSCertificateFile {cert}
            TLSCertificateKeyFile {key}
            sizelimit unlimited

            database mdb
            suffix "{SUFFIX}"
            rootdn "{ADMIN_DN}"
            rootpw {ADMIN_PASSWORD}
            directory {self.root / 'db'}
            maxsize 33554432
            access to attrs=userPassword
                by self write
                by anonymous auth
                by * none
            access to *
                by dn.exact="{READER_DN}" read
                by * none
            overlay memberof
            """)

    def start(self) -> Slapd:
        need_slapd()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "db").mkdir(exist_ok=True)
        self.ca, cert, key = make_tls(self.root / "tls")
        conf = self.root / "slapd.conf"
        conf.write_text(self._config(cert, key))
        self.port, self.tls_port = self.port or free_port(), self.tls_port or free_port()
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tls_port}/"
        log = (self.root / "slapd.log").open("wb")
        self.proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", urls, "-d", "0"],
                                     stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, self.proc, timeout=30)
            wait_for_port(self.tls_port, self.proc, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"slapd did not start: {exc}:\n"
                               f"{(self.root / 'slapd.log').read_text()[-2000:]}") from None
        self.load_base()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> None:
        """Start again on the same ports and data (after :meth:`stop`)."""
        log = (self.root / "slapd.log").open("ab")
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tls_port}/"
        self.proc = subprocess.Popen([SLAPD, "-f", str(self.root / "slapd.conf"), "-h", urls,
                                      "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, timeout=30)

    # -- entries ---------------------------------------------------------------------------
    def _tool(self, tool: str, ldif: str) -> None:
        done = subprocess.run(
            [tool, "-x", "-H", self.url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD],
            input=ldif.encode(), capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.decode()}")

    def add(self, ldif: str) -> None:
        self._tool("ldapadd", textwrap.dedent(ldif))

    def modify(self, ldif: str) -> None:
        self._tool("ldapmodify", textwrap.dedent(ldif))

    def load_base(self) -> None:
        self.add(f"""\
            dn: {SUFFIX}
            objectClass: dcObject
            objectClass: organization
            o: Hospital
            dc: hospital

            dn: ou=people,{SUFFIX}
            objectClass: organizationalUnit
            ou: people

            dn: ou=groups,{SUFFIX}
            objectClass: organizationalUnit
            ou: groups

            dn: ou=services,{SUFFIX}
            objectClass: organizationalUnit
            ou: services

            dn: {READER_DN}
            objectClass: organizationalRole
            objectClass: simpleSecurityObject
            cn: broker
            userPassword: {READER_PASSWORD}
            """)

    def add_user(self, uid: str, email: str) -> str:
        self.add(f"""\
            dn: {user_dn(uid)}
            objectClass: inetOrgPerson
            uid: {uid}
            cn: {uid}
            sn: {uid}
            mail: {email}
            """)
        return user_dn(uid)

    def add_group(self, name: str, *members: str) -> str:
        """A groupOfNames. It must always have a member, so the group's own DN is one too
        (and every real member can be removed)."""
        lines = "".join(f"member: {user_dn(m)}\n" for m in members)
        self.add(f"dn: {group_dn(name)}\nobjectClass: groupOfNames\ncn: {name}\n"
                 f"member: {group_dn(name)}\n{lines}")
        return group_dn(name)

    def add_unique_group(self, name: str, *members: str) -> str:
        """A groupOfUniqueNames (OpenLDAP's other static group): uniqueMember values."""
        lines = "".join(f"uniqueMember: {user_dn(m)}\n" for m in members)
        self.add(f"dn: {group_dn(name)}\nobjectClass: groupOfUniqueNames\ncn: {name}\n"
                 f"{lines}")
        return group_dn(name)

    def add_member(self, group: str, uid: str) -> None:
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\nadd: member\n"
                    f"member: {user_dn(uid)}\n")

    def remove_member(self, group: str, uid: str) -> None:
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\ndelete: member\n"
                    f"member: {user_dn(uid)}\n")


def wait_gone(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while proc is not None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
