"""Unit tests for coordinator.pki: CA, issuing, CSR checks, files, and a real TLS handshake."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.trust import pki

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
E = TypeVar("E", bound=x509.ExtensionType)

# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CA:
    return pki.create_ca()


@pytest.fixture(scope="module")
def other_ca() -> CA:
    return pki.create_ca("Somebody else's CA")


def _spki(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ext(cert: x509.Certificate, cls: type[E]) -> E:
    return cert.extensions.get_extension_for_class(cls).value


# --- keys and loading -----------------------------------------------------------------


def test_key_roundtrip_and_garbage() -> None:
    key = pki.generate_key()
    assert isinstance(key.curve, ec.SECP256R1)
    pem = pki.key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _spki(pki.load_key(pem).public_key()) == _spki(key.public_key())
    with pytest.raises(pki.PkiError):
        pki.load_key(b"not a key")
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(pki.PkiError, match="EC"):
        pki.load_key(rsa_pem)


def test_load_cert_pem_der_and_garbage(ca: CA) -> None:
    _, cert = ca
    pem = pki.cert_pem(cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert pki.load_cert(pem) == cert
    assert pki.load_cert(der) == cert
    # A key followed by its certificate (the agent's identity.pem) still loads.
    assert pki.load_cert(pki.key_pem(pki.generate_key()) + pem) == cert
    for junk in (
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        with pytest.raises(pki.PkiError):
            pki.load_cert(junk)
    with pytest.raises(pki.PkiError):
        pki.inspect_cert(b"\x30\x03\x02\x01")


# --- CA and issuing ----------------------------------------------------------------


def test_ca_properties(ca: CA) -> None:
    key, cert = ca
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Moorage"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Moorage fleet CA"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3649 <= lifetime.days <= 3651
    pki.verify_issued_by(cert, cert)  # self-signed
    pin = pki.ca_pin(cert)
    assert len(pin) == 64 and int(pin, 16) >= 0
    assert pin == pki.inspect_cert(cert).fingerprint


def test_server_cert_sans_and_chain(ca: CA) -> None:
    ca_key, ca_cert = ca
    key, cert = pki.issue_server_cert(
        ca_key, ca_cert, ["coord.example", "localhost"], ["127.0.0.1", "::1", "10.1.2.3"]
    )
    san = _ext(cert, x509.SubjectAlternativeName)
    assert set(san.get_values_for_type(x509.DNSName)) == {"coord.example", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _ext(cert, x509.BasicConstraints).ca is False
    info = pki.inspect_cert(cert)
    assert info.common_name == "coord.example"
    assert info.role == pki.ROLE_SERVER
    assert _spki(key.public_key()) == _spki(cert.public_key())
    pki.verify_issued_by(cert, ca_cert)
    # IP-only server certificate: CN is the first IP.
    _, ip_only = pki.issue_server_cert(ca_key, ca_cert, [], ["192.0.2.7"])
    assert pki.inspect_cert(ip_only).common_name == "192.0.2.7"
    with pytest.raises(pki.PkiError):
        pki.issue_server_cert(ca_key, ca_cert, [], [])
    with pytest.raises(pki.PkiError, match="IP"):
        pki.issue_server_cert(ca_key, ca_cert, ["a.example"], ["not-an-ip"])


def test_client_cert(ca: CA) -> None:
    ca_key, ca_cert = ca
    _, cert = pki.issue_client_cert(ca_key, ca_cert, "admin", pki.ROLE_ADMIN, 10)
    info = pki.inspect_cert(pki.cert_pem(cert))
    assert (info.common_name, info.role) == ("admin", pki.ROLE_ADMIN)
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert abs(info.not_after - info.not_before - (10 * 86400 + 60)) < 5
    pki.verify_issued_by(cert, ca_cert)
    with pytest.raises(pki.PkiError, match="role"):
        pki.issue_client_cert(ca_key, ca_cert, "admin", "superuser", 10)


def test_issuing_with_mismatched_ca_key_refused(ca: CA, other_ca: CA) -> None:
    _, ca_cert = ca
    other_key, _ = other_ca
    with pytest.raises(pki.PkiError, match="does not match"):
        pki.issue_client_cert(other_key, ca_cert, "admin", pki.ROLE_ADMIN, 1)


# --- CSRs ---------------------------------------------------------------------------


def test_sign_csr_happy_path(ca: CA) -> None:
    ca_key, ca_cert = ca
    key = pki.generate_key()
    csr = pki.make_csr(key, "machine-0001")
    assert csr.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    before = time.time()
    cert = pki.sign_csr(
        ca_key, ca_cert, csr, common_name="machine-0001", role=pki.ROLE_AGENT, validity_s=3600
    )
    after = time.time()
    info = pki.inspect_cert(cert)
    assert info.common_name == "machine-0001"
    assert info.role == pki.ROLE_AGENT
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Moorage"
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _ext(cert, x509.BasicConstraints).ca is False
    assert _spki(cert.public_key()) == _spki(key.public_key())
    # Validity: backdated 60 s for clock skew, valid for validity_s from now.
    assert before - 61 <= info.not_before <= after - 59
    assert before + 3599 <= info.not_after <= after + 3601
    assert info.serial == format(cert.serial_number, "x") and info.serial == info.serial.lower()
    assert cert.serial_number > 2**64
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == _ext(ca_cert, x509.SubjectKeyIdentifier).digest
    pki.verify_issued_by(cert, ca_cert)
    # Each issue gets a fresh serial.
    again = pki.sign_csr(
        ca_key, ca_cert, csr, common_name="machine-0001", role=pki.ROLE_AGENT, validity_s=3600
    )
    assert again.serial_number != cert.serial_number


def test_sign_csr_ignores_requested_extensions(ca: CA) -> None:
    ca_key, ca_cert = ca
    key = pki.generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, pki.ROLE_ADMIN),
                    x509.NameAttribute(NameOID.COMMON_NAME, "m1"),
                ]
            )
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = pki.sign_csr(ca_key, ca_cert, csr, common_name="m1", role=pki.ROLE_AGENT, validity_s=60)
    assert pki.inspect_cert(cert).role == pki.ROLE_AGENT
    assert _ext(cert, x509.BasicConstraints).ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_sign_csr_wrong_cn_refused(ca: CA) -> None:
    ca_key, ca_cert = ca
    csr = pki.make_csr(pki.generate_key(), "machine-a")
    with pytest.raises(pki.PkiError, match="common name"):
        pki.sign_csr(
            ca_key, ca_cert, csr, common_name="machine-b", role=pki.ROLE_AGENT, validity_s=60
        )


def test_sign_csr_tampered_subject_refused(ca: CA) -> None:
    ca_key, ca_cert = ca
    der = x509.load_pem_x509_csr(pki.make_csr(pki.generate_key(), "machine-a")).public_bytes(
        serialization.Encoding.DER
    )
    tampered = der.replace(b"machine-a", b"machine-b")
    assert tampered != der
    with pytest.raises(pki.PkiError, match="signature"):
        pki.sign_csr(
            ca_key, ca_cert, tampered, common_name="machine-b", role=pki.ROLE_AGENT, validity_s=60
        )


def test_sign_csr_swapped_public_key_refused(ca: CA) -> None:
    """Someone else's public key in a CSR signed by my key: no proof of possession."""
    ca_key, ca_cert = ca
    mine, theirs = pki.generate_key(), pki.generate_key()
    der = x509.load_pem_x509_csr(pki.make_csr(mine, "m1")).public_bytes(serialization.Encoding.DER)
    swapped = der.replace(_spki(mine.public_key()), _spki(theirs.public_key()))
    assert swapped != der
    pem = x509.load_der_x509_csr(swapped).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.PkiError, match="signature"):
        pki.sign_csr(ca_key, ca_cert, pem, common_name="m1", role=pki.ROLE_AGENT, validity_s=60)


def test_sign_csr_garbage_refused(ca: CA) -> None:
    ca_key, ca_cert = ca
    for junk in (b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", b"x" * 100_000):
        with pytest.raises(pki.PkiError):
            pki.sign_csr(
                ca_key, ca_cert, junk, common_name="m1", role=pki.ROLE_AGENT, validity_s=60
            )


def _csr_with(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cn: str) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def test_sign_csr_key_types(ca: CA) -> None:
    ca_key, ca_cert = ca
    weak = _csr_with(rsa.generate_private_key(65537, 1024), "m1")
    with pytest.raises(pki.PkiError, match="RSA"):
        pki.sign_csr(ca_key, ca_cert, weak, common_name="m1", role=pki.ROLE_AGENT, validity_s=60)
    odd_curve = _csr_with(ec.generate_private_key(ec.SECP256K1()), "m1")
    with pytest.raises(pki.PkiError, match="curve"):
        pki.sign_csr(
            ca_key, ca_cert, odd_curve, common_name="m1", role=pki.ROLE_AGENT, validity_s=60
        )
    for good in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
        cert = pki.sign_csr(
            ca_key,
            ca_cert,
            _csr_with(good, "m1"),
            common_name="m1",
            role=pki.ROLE_AGENT,
            validity_s=60,
        )
        assert _spki(cert.public_key()) == _spki(good.public_key())


def test_sign_csr_bad_validity_refused(ca: CA) -> None:
    ca_key, ca_cert = ca
    csr = pki.make_csr(pki.generate_key(), "m1")
    for bad in (0, -5, float("inf"), float("nan")):
        with pytest.raises(pki.PkiError, match="validity"):
            pki.sign_csr(
                ca_key, ca_cert, csr, common_name="m1", role=pki.ROLE_AGENT, validity_s=bad
            )


def test_leaf_lifetime_capped_at_ca(ca: CA) -> None:
    ca_key, ca_cert = ca
    csr = pki.make_csr(pki.generate_key(), "m1")
    cert = pki.sign_csr(
        ca_key, ca_cert, csr, common_name="m1", role=pki.ROLE_AGENT, validity_s=100 * 365 * 86400
    )
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_verify_issued_by_other_ca_fails(ca: CA, other_ca: CA) -> None:
    ca_key, ca_cert = ca
    _, other_cert = other_ca
    _, cert = pki.issue_client_cert(ca_key, ca_cert, "admin", pki.ROLE_ADMIN, 1)
    pki.verify_issued_by(cert, ca_cert)
    with pytest.raises(pki.PkiError):
        pki.verify_issued_by(cert, other_cert)
    # Same subject name as our CA but a different key: the signature check catches it.
    impostor_key, impostor = pki.create_ca()
    assert impostor.subject == ca_cert.subject
    with pytest.raises(pki.PkiError, match="signature"):
        pki.verify_issued_by(cert, impostor)
    _, forged = pki.issue_client_cert(impostor_key, impostor, "admin", pki.ROLE_ADMIN, 1)
    with pytest.raises(pki.PkiError):
        pki.verify_issued_by(forged, ca_cert)


# --- files ---------------------------------------------------------------------------


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_private_and_public(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)
    try:
        target = tmp_path / "secret.key"
        pki.write_private(target, b"one")
        assert target.read_bytes() == b"one"
        assert _mode(target) == 0o600
        target.chmod(0o644)
        pki.write_private(target, b"two")  # replacing also resets the mode
        assert target.read_bytes() == b"two"
        assert _mode(target) == 0o600
    finally:
        os.umask(old_umask)
    old_umask = os.umask(0o077)
    try:
        pub = tmp_path / "ca.pem"
        pki.write_public(pub, b"cert")
        assert _mode(pub) == 0o644
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "secret.key"]


def test_write_private_failure_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "adir"
    target.mkdir()
    (target / "x").write_bytes(b"")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        pki.write_private(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


def test_write_private_is_0600_from_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file is opened with 0600 already: check the mode os.open is called with."""
    seen: list[int] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            seen.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    pki.write_private(tmp_path / "k", b"secret")
    assert seen == [0o600]


# --- init_pki ------------------------------------------------------------------------


def test_init_pki_idempotent(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    paths = pki.init_pki(d, ["localhost"], ["127.0.0.1"])
    assert paths == pki.PkiPaths.under(d)
    assert Path(paths.ca_cert) == d / "ca.pem" and Path(paths.admin_key) == d / "admin.key"
    assert _mode(d) == 0o700
    for key_file in (paths.ca_key, paths.server_key, paths.admin_key):
        assert _mode(key_file) == 0o600
    for cert_file in (paths.ca_cert, paths.server_cert, paths.admin_cert):
        assert _mode(cert_file) == 0o644

    ca_cert = pki.load_cert(Path(paths.ca_cert).read_bytes())
    server = pki.load_cert(Path(paths.server_cert).read_bytes())
    admin = pki.load_cert(Path(paths.admin_cert).read_bytes())
    pki.verify_issued_by(server, ca_cert)
    pki.verify_issued_by(admin, ca_cert)
    admin_info = pki.inspect_cert(admin)
    assert (admin_info.common_name, admin_info.role) == ("admin", pki.ROLE_ADMIN)
    assert 824 <= (admin.not_valid_after_utc - admin.not_valid_before_utc).days <= 826

    before = {
        p: Path(p).read_bytes()
        for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.admin_cert, paths.admin_key)
    }
    again = pki.init_pki(d, ["localhost"], ["127.0.0.1"])
    assert again == paths
    after = {p: Path(p).read_bytes() for p in before}
    assert after == before
    assert pki.ca_pin(pki.load_cert(Path(again.ca_cert).read_bytes())) == pki.ca_pin(ca_cert)
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["ca.pem", "ca.key", "server.pem", "server.key", "admin.pem", "admin.key"]
    )


def test_init_pki_reissues_server_cert_for_new_ip(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    paths = pki.init_pki(d, ["localhost"], ["127.0.0.1"])
    ca_pin = pki.ca_pin(pki.load_cert(Path(paths.ca_cert).read_bytes()))
    old_server = Path(paths.server_cert).read_bytes()
    old_admin = Path(paths.admin_cert).read_bytes()

    pki.init_pki(d, ["localhost"], ["127.0.0.1", "10.9.8.7"])
    new_server = pki.load_cert(Path(paths.server_cert).read_bytes())
    assert pki.cert_pem(new_server) != old_server
    san = _ext(new_server, x509.SubjectAlternativeName)
    assert ipaddress.ip_address("10.9.8.7") in san.get_values_for_type(x509.IPAddress)
    ca_cert = pki.load_cert(Path(paths.ca_cert).read_bytes())
    assert pki.ca_pin(ca_cert) == ca_pin  # same CA
    pki.verify_issued_by(new_server, ca_cert)
    assert Path(paths.admin_cert).read_bytes() == old_admin
    key = pki.load_key(Path(paths.server_key).read_bytes())
    assert _spki(key.public_key()) == _spki(new_server.public_key())
    assert _mode(paths.server_key) == 0o600

    # A subset of the covered names does not cause a re-issue.
    current = Path(paths.server_cert).read_bytes()
    pki.init_pki(d, [], ["10.9.8.7"])
    assert Path(paths.server_cert).read_bytes() == current
    # A new name does.
    pki.init_pki(d, ["coord.example"], [])
    assert Path(paths.server_cert).read_bytes() != current


def test_init_pki_repairs_leaves_but_never_replaces_ca(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    paths = pki.init_pki(d, ["localhost"], [])
    ca_bytes = Path(paths.ca_cert).read_bytes()
    Path(paths.admin_key).unlink()
    Path(paths.server_cert).write_bytes(b"garbage")
    pki.init_pki(d, ["localhost"], [])
    assert Path(paths.ca_cert).read_bytes() == ca_bytes
    ca_cert = pki.load_cert(ca_bytes)
    pki.verify_issued_by(pki.load_cert(Path(paths.server_cert).read_bytes()), ca_cert)
    pki.verify_issued_by(pki.load_cert(Path(paths.admin_cert).read_bytes()), ca_cert)
    assert _mode(paths.admin_key) == 0o600

    Path(paths.ca_key).unlink()
    with pytest.raises(pki.PkiError, match=r"ca\.key"):
        pki.init_pki(d, ["localhost"], [])
    assert Path(paths.ca_cert).read_bytes() == ca_bytes


# --- TLS ---------------------------------------------------------------------------------


class _Tls:
    """A CA, server cert/key and CA file on disk for the loopback tests."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.paths = pki.init_pki(d / "pki", ["localhost"], ["127.0.0.1"])
        self.ca_key = pki.load_key(Path(self.paths.ca_key).read_bytes())
        self.ca_cert = pki.load_cert(Path(self.paths.ca_cert).read_bytes())

    def agent_identity(
        self,
        name: str,
        ca_key: ec.EllipticCurvePrivateKey | None = None,
        ca_cert: x509.Certificate | None = None,
    ) -> Path:
        """An agent's identity.pem (key + cert in one file) via make_csr/sign_csr."""
        key = pki.generate_key()
        cert = pki.sign_csr(
            ca_key or self.ca_key,
            ca_cert or self.ca_cert,
            pki.make_csr(key, name),
            common_name=name,
            role=pki.ROLE_AGENT,
            validity_s=3600,
        )
        path = self.dir / f"{name}.pem"
        pki.write_private(path, pki.key_pem(key) + pki.cert_pem(cert))
        return path


@pytest.fixture
def tls(tmp_path: Path) -> _Tls:
    return _Tls(tmp_path)


@contextlib.asynccontextmanager
async def _server(
    tls: _Tls, client_certs: Literal["required", "optional"], seen: list[pki.CertInfo | None]
) -> AsyncIterator[int]:
    ctx = pki.server_ssl_context(
        tls.paths.server_cert, tls.paths.server_key, tls.paths.ca_cert, client_certs=client_certs
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = pki.peer_cert_info(writer.transport)
        seen.append(info)
        writer.write(f"hello {info.common_name if info else '-'}\n".encode())
        await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    # Refused handshakes are reported through the loop's exception handler; expected here.
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, _context: None)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(previous)


async def _exchange(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_tls_handshake_with_agent_cert(tls: _Tls) -> None:
    identity = tls.agent_identity("machine-0001")
    seen: list[pki.CertInfo | None] = []
    async with _server(tls, "required", seen) as port:
        # identity.pem carries key and certificate together, as the agent stores them.
        ctx = pki.client_ssl_context(tls.paths.ca_cert, identity)
        assert ctx.check_hostname and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert await _exchange(port, ctx) == b"hello machine-0001\n"
        # Separate cert and key files work too (the admin identity).
        ctx = pki.client_ssl_context(tls.paths.ca_cert, tls.paths.admin_cert, tls.paths.admin_key)
        assert await _exchange(port, ctx) == b"hello admin\n"
    assert [(i.common_name, i.role) for i in seen if i] == [
        ("machine-0001", pki.ROLE_AGENT),
        ("admin", pki.ROLE_ADMIN),
    ]
    agent_cert = pki.load_cert(identity.read_bytes())
    assert seen[0] == pki.inspect_cert(agent_cert)


async def _expect_refused(port: int, ctx: ssl.SSLContext) -> None:
    """With TLS 1.3 the client finishes its handshake before the server checks the
    client certificate, so the refusal may only show as an alert/EOF on first read."""
    try:
        line = await _exchange(port, ctx)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return
    assert line == b"", f"expected refusal, got {line!r}"


async def test_tls_client_cert_from_other_ca_refused(tls: _Tls, tmp_path: Path) -> None:
    other_key, other_cert = pki.create_ca()
    foreign = tls.agent_identity("machine-0002", other_key, other_cert)
    seen: list[pki.CertInfo | None] = []
    async with _server(tls, "required", seen) as port:
        await _expect_refused(port, pki.client_ssl_context(tls.paths.ca_cert, foreign))
        # No certificate at all is refused too when certificates are required.
        await _expect_refused(port, pki.client_ssl_context(tls.paths.ca_cert))
    assert seen == []


async def test_tls_optional_client_certs(tls: _Tls) -> None:
    seen: list[pki.CertInfo | None] = []
    async with _server(tls, "optional", seen) as port:
        assert await _exchange(port, pki.client_ssl_context(tls.paths.ca_cert)) == b"hello -\n"
        identity = tls.agent_identity("machine-0003")
        ctx = pki.client_ssl_context(tls.paths.ca_cert, identity)
        assert await _exchange(port, ctx) == b"hello machine-0003\n"
        # Optional does not mean unverified: a foreign certificate is still refused.
        other_key, other_cert = pki.create_ca()
        foreign = tls.agent_identity("machine-0004", other_key, other_cert)
        await _expect_refused(port, pki.client_ssl_context(tls.paths.ca_cert, foreign))
    assert [i.common_name if i else None for i in seen] == [None, "machine-0003"]


async def test_tls_client_rejects_server_from_other_ca(tls: _Tls, tmp_path: Path) -> None:
    other = pki.init_pki(tmp_path / "other", ["localhost"], ["127.0.0.1"])
    seen: list[pki.CertInfo | None] = []
    async with _server(tls, "optional", seen) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _exchange(port, pki.client_ssl_context(other.ca_cert))


async def test_tls_server_requires_tls13(tls: _Tls) -> None:
    seen: list[pki.CertInfo | None] = []
    ctx = pki.server_ssl_context(
        tls.paths.server_cert, tls.paths.server_key, tls.paths.ca_cert, client_certs="required"
    )
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    async with _server(tls, "required", seen) as port:
        client = pki.client_ssl_context(tls.paths.ca_cert, tls.agent_identity("m5"))
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _exchange(port, client)
    assert seen == []


async def test_tls_server_issues_no_session_tickets(tls: _Tls) -> None:
    """No client resumes (agents, moorctl and fleetctl make a full handshake each time),
    so a ticket is only work: two encryptions of a session holding the client's
    certificate on every handshake, which a reconnect storm pays 10,000 times."""
    seen: list[pki.CertInfo | None] = []
    async with _server(tls, "required", seen) as port:
        ctx = pki.client_ssl_context(tls.paths.ca_cert, tls.agent_identity("m6"))
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10
        )
        try:
            # Tickets come after the handshake, before the server's first data.
            assert await asyncio.wait_for(reader.readline(), 10) == b"hello m6\n"
            session = writer.get_extra_info("ssl_object").session
            assert session is None or not session.has_ticket
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def test_peer_cert_info_without_tls() -> None:
    assert pki.peer_cert_info(None) is None
    assert pki.peer_cert_info(object()) is None

    class PlainTransport:
        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    assert pki.peer_cert_info(PlainTransport()) is None
