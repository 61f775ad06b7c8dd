"""Key, CSR and certificate primitives both sides need, on `cryptography`.

The agent makes its key and CSR and reads its own certificate with these; the
coordinator's CA (coordinator/trust/pki.py) issues and verifies with them. Kept in the
contract package so the agent ships without the coordinator. Every refusal raises
`PkiError` with a message that is safe to show to the requester.
"""

from __future__ import annotations

import hashlib

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class PkiError(Exception):
    """A PKI operation was refused or failed; the message says why."""


class CertInfo(msgspec.Struct, frozen=True):
    """What the rest of Moorage needs to know about a certificate, decoupled from
    `cryptography` so it can be stored, logged and compared cheaply."""

    common_name: str
    role: str  # OU value, "" if none
    serial: str  # lowercase hex of the serial number
    not_before: float  # epoch seconds
    not_after: float
    fingerprint: str  # sha256 hex of DER


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key: small, fast, and accepted by every TLS stack we meet."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: file permissions (0600) protect it, not a passphrase."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted EC private key from PEM; anything else is a PkiError."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"cannot load private key: {reason(exc)}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"expected an EC private key, got {type(key).__name__}")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: bytes) -> x509.Certificate:
    """Load a certificate from PEM (the first CERTIFICATE block) or DER."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load certificate: {reason(exc)}") from None


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A PEM CSR for `common_name`, signed by `key` to prove possession of it."""
    try:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
        )
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot build certificate request: {reason(exc)}") from None
    return csr.public_bytes(serialization.Encoding.PEM)


def inspect_cert(cert: x509.Certificate | bytes) -> CertInfo:
    """Summarise a certificate (object, PEM or DER) as a CertInfo."""
    if isinstance(cert, bytes | bytearray | memoryview):
        cert = load_cert(bytes(cert))
    subject = cert.subject
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return CertInfo(
        common_name=attr_str(cns[0].value) if cns else "",
        role=attr_str(ous[0].value) if ous else "",
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def ca_pin(ca_cert: x509.Certificate) -> str:
    """sha256 hex of the CA certificate's DER: what join tokens carry to pin the CA."""
    return hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def attr_str(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

