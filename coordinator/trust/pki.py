"""Moorage's own PKI: the fleet CA, the coordinator's server certificate, client
certificates for agents and admins, and the TLS contexts that use them.

Everything is built on the `cryptography` package; nothing shells out to openssl.

Trust model, in short:

* One self-signed fleet CA per coordinator (`ca.pem`/`ca.key`), ECDSA P-256, path
  length 0: it signs leaf certificates only.
* A certificate's *role* lives in the subject's organizationalUnitName (OU): ``agent``
  for machines, ``admin`` for moorctl/fleetctl, ``server`` for the coordinator. The
  organizationName (O) is always ``Moorage``. Authorisation code reads the role with
  `peer_cert_info` and must not trust anything else the client sends.
* Agents generate their key locally and send a CSR; `sign_csr` takes *only* the public
  key from it. Subject, extensions and validity are decided here, so a CSR cannot ask
  for a CA certificate, a server certificate or a different identity.
* Join tokens pin the CA by `ca_pin` (sha256 of its DER), so an agent can trust the CA
  it downloads during enrolment without any prior configuration.

Every refusal raises `PkiError` with a message that is safe to show to the requester.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import math
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proto.crypto import (
    CertInfo,
    PkiError,
    attr_str,
    ca_pin,
    cert_pem,
    generate_key,
    inspect_cert,
    key_pem,
    load_cert,
    load_key,
    make_csr,
    reason,
)
from proto.files import write_private, write_public
from proto.tls import client_ssl_context

__all__ = [
    "ROLE_ADMIN",
    "ROLE_AGENT",
    "ROLE_SERVER",
    "CertInfo",
    "PkiError",
    "PkiPaths",
    "ca_pin",
    "cert_pem",
    "client_ssl_context",
    "create_ca",
    "generate_key",
    "init_pki",
    "inspect_cert",
    "issue_client_cert",
    "issue_server_cert",
    "key_pem",
    "load_cert",
    "load_key",
    "make_csr",
    "peer_cert_info",
    "server_ssl_context",
    "sign_csr",
    "verify_issued_by",
    "write_private",
    "write_public",
]

ROLE_AGENT = "agent"
ROLE_ADMIN = "admin"
ROLE_SERVER = "server"
ROLES = frozenset({ROLE_AGENT, ROLE_ADMIN, ROLE_SERVER})

ORGANIZATION = "Moorage"

#: Backdate every certificate by this much so a peer whose clock runs a little behind
#: ours does not reject a certificate we just issued as "not yet valid".
CLOCK_SKEW_S = 60.0

#: A CSR larger than this is not a CSR we want to parse (RSA-4096 is under 2 KiB).
MAX_CSR_BYTES = 64 * 1024

#: `init_pki` re-issues the server certificate when it expires sooner than this.
SERVER_RENEW_BEFORE_S = 30 * 86400.0

SERVER_CERT_DAYS = 825
ADMIN_CERT_DAYS = 825
ADMIN_COMMON_NAME = "admin"

# The upper bound of X.509's CommonName (ub-common-name).
_MAX_CN_LEN = 64


# --- issuing ------------------------------------------------------------------------------


def create_ca(
    common_name: str = "Moorage fleet CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed fleet CA. path_length=0: it may sign leaves, never sub-CAs."""
    _check_days(days)
    key = generate_key()
    name = _name(common_name, role=None)
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW_S))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_server_cert(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    names: Sequence[str],
    ips: Sequence[str],
    days: int = SERVER_CERT_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The coordinator's TLS server certificate, valid for every given DNS name and IP
    so clients can verify it by whatever address they dial."""
    _check_days(days)
    dns = _dns_names(names)
    addrs = _ip_addresses(ips)
    if not dns and not addrs:
        raise PkiError("a server certificate needs at least one DNS name or IP address")
    first = dns[0] if dns else str(addrs[0])
    common_name = first if len(first) <= _MAX_CN_LEN else "Moorage coordinator"
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(a) for a in addrs]
    key = generate_key()
    cert = _issue(
        ca_key,
        ca_cert,
        key.public_key(),
        common_name=common_name,
        role=ROLE_SERVER,
        validity_s=days * 86400.0,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )
    return key, cert


def issue_client_cert(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    common_name: str,
    role: str,
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A client certificate with a key generated here (used for the admin identity of
    moorctl/fleetctl; agents use `make_csr` + `sign_csr` so their key never travels)."""
    _check_days(days)
    key = generate_key()
    cert = _issue(
        ca_key,
        ca_cert,
        key.public_key(),
        common_name=common_name,
        role=role,
        validity_s=days * 86400.0,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return key, cert


def sign_csr(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    csr_pem: bytes,
    *,
    common_name: str,
    role: str,
    validity_s: float,
) -> x509.Certificate:
    """Issue a client certificate for the public key in a CSR.

    Only the public key is taken from the request: the subject is rebuilt from
    `common_name`/`role`, requested extensions are ignored, and the validity window is
    ours. The CSR must be correctly self-signed (proof of possession of the key) and
    name exactly `common_name`, so a token for one machine cannot mint another's.
    """
    if len(csr_pem) > MAX_CSR_BYTES:
        raise PkiError(f"certificate request too large ({len(csr_pem)} bytes)")
    try:
        if b"-----BEGIN" in csr_pem:
            csr = x509.load_pem_x509_csr(csr_pem)
        else:
            csr = x509.load_der_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"unparsable certificate request: {reason(exc)}") from None
    try:
        public = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"unusable certificate request: {reason(exc)}") from None
    if not valid:
        raise PkiError("certificate request signature is invalid")
    cns = [attr_str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [common_name]:
        shown = ", ".join(repr(c) for c in cns) or "none"
        raise PkiError(f"certificate request common name must be {common_name!r}, got {shown}")
    accepted = _accepted_public_key(public)
    return _issue(
        ca_key,
        ca_cert,
        accepted,
        common_name=common_name,
        role=role,
        validity_s=validity_s,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
    )


# --- inspecting and verifying ------------------------------------------------------------


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise PkiError unless `cert` names `ca_cert` as issuer and its signature verifies
    with the CA's public key. Validity dates and revocation are the caller's business."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except InvalidSignature:
        raise PkiError("certificate signature does not verify with the CA key") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"certificate was not issued by this CA: {reason(exc)}") from None


# --- files ------------------------------------------------------------------------------


class PkiPaths(msgspec.Struct, frozen=True):
    """Where the coordinator's PKI files live (strings, so the struct serialises)."""

    dir: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    admin_cert: str
    admin_key: str

    @classmethod
    def under(cls, directory: Path) -> PkiPaths:
        d = Path(directory)
        return cls(
            dir=str(d),
            ca_cert=str(d / "ca.pem"),
            ca_key=str(d / "ca.key"),
            server_cert=str(d / "server.pem"),
            server_key=str(d / "server.key"),
            admin_cert=str(d / "admin.pem"),
            admin_key=str(d / "admin.key"),
        )


def init_pki(directory: Path, names: Sequence[str], ips: Sequence[str]) -> PkiPaths:
    """Bring the coordinator's PKI directory to a usable state; safe to call at every start.

    * The CA is created only if neither its certificate nor its key exists. An existing
      CA is never replaced: every agent trusts it. Half a CA (one file missing) or a key
      that does not match the certificate is a PkiError, for a human to sort out.
    * The server certificate is (re-)issued when missing, unreadable, not from this CA,
      not matching its key, not covering every requested name and IP, or expiring
      within 30 days.
    * The admin client certificate (CN "admin", role admin) is issued when missing,
      unreadable, not from this CA, not matching its key, or expired.
    """
    paths = PkiPaths.under(Path(directory))
    d = Path(paths.dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)

    ca_key, ca_cert = _load_or_create_ca(paths)
    now = _now().timestamp()

    server = _load_pair(paths.server_cert, paths.server_key, ca_cert)
    if (
        server is None
        or not _covers(server, names, ips)
        or server.not_valid_after_utc.timestamp() - now < SERVER_RENEW_BEFORE_S
    ):
        key, cert = issue_server_cert(ca_key, ca_cert, names, ips)
        write_private(Path(paths.server_key), key_pem(key))
        write_public(Path(paths.server_cert), cert_pem(cert))

    admin = _load_pair(paths.admin_cert, paths.admin_key, ca_cert)
    if admin is None or admin.not_valid_after_utc.timestamp() <= now:
        key, cert = issue_client_cert(
            ca_key, ca_cert, ADMIN_COMMON_NAME, ROLE_ADMIN, ADMIN_CERT_DAYS
        )
        write_private(Path(paths.admin_key), key_pem(key))
        write_public(Path(paths.admin_cert), cert_pem(cert))
    return paths


def _load_or_create_ca(paths: PkiPaths) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert_path, key_path = Path(paths.ca_cert), Path(paths.ca_key)
    if not cert_path.exists() and not key_path.exists():
        key, cert = create_ca()
        # Key first: a crash in between leaves a key without a certificate, which is
        # reported below rather than silently replaced by a new CA.
        write_private(key_path, key_pem(key))
        write_public(cert_path, cert_pem(cert))
        return key, cert
    if not cert_path.exists() or not key_path.exists():
        missing = cert_path if not cert_path.exists() else key_path
        raise PkiError(f"incomplete CA in {paths.dir}: {missing.name} is missing")
    key = load_key(key_path.read_bytes())
    cert = load_cert(cert_path.read_bytes())
    _check_ca(key, cert)
    with contextlib.suppress(OSError):
        os.chmod(key_path, 0o600)
    return key, cert


def _load_pair(cert_file: str, key_file: str, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """The certificate if it and its key are present, readable, matching and issued
    by `ca_cert`; None means "issue a new one"."""
    try:
        cert = load_cert(Path(cert_file).read_bytes())
        key = load_key(Path(key_file).read_bytes())
        verify_issued_by(cert, ca_cert)
    except (OSError, PkiError):
        return None
    if _spki(key.public_key()) != _spki(cert.public_key()):
        return None
    return cert


def _covers(cert: x509.Certificate, names: Sequence[str], ips: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        want_dns = _dns_names(names)
        want_ips = _ip_addresses(ips)
    except (x509.ExtensionNotFound, PkiError):
        return False
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    return set(want_dns) <= have_dns and set(want_ips) <= have_ips


# --- TLS --------------------------------------------------------------------------------

PathArg = str | os.PathLike[str]


def server_ssl_context(
    cert_file: PathArg,
    key_file: PathArg,
    ca_file: PathArg,
    *,
    client_certs: Literal["required", "optional"],
) -> ssl.SSLContext:
    """TLS 1.3-only server context trusting only the fleet CA for client certificates.

    "optional" (the API) lets token-authenticated clients in without a certificate, but
    a certificate that *is* presented must still verify against the CA.
    """
    if client_certs not in ("required", "optional"):
        raise PkiError(f"client_certs must be 'required' or 'optional', not {client_certs!r}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=os.fspath(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL
    # No TLS 1.3 session tickets: no client of ours resumes a session, and each ticket
    # is the session (client certificate included) encrypted: ~20 % of a handshake's
    # server CPU, paid by every agent of a reconnect wave (bench_tls, figure 11).
    ctx.num_tickets = 0
    return ctx


def peer_cert_info(transport_or_ssl_object: object) -> CertInfo | None:
    """The verified certificate of the TLS peer, or None when there is none.

    Accepts an asyncio transport (aiohttp's ``request.transport``) or an
    ssl.SSLObject/SSLSocket. Returns None for plain-TCP transports, when no certificate
    was presented, and when the context does not verify peers (CERT_NONE), because an
    unverified certificate proves nothing.
    """
    obj = transport_or_ssl_object
    if obj is None:
        return None
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        get_extra_info = getattr(obj, "get_extra_info", None)
        if get_extra_info is None:
            return None
        obj = get_extra_info("ssl_object")
        if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
            return None
    if obj.context.verify_mode == ssl.CERT_NONE:
        return None
    try:
        der = obj.getpeercert(binary_form=True)
    except (ValueError, OSError):  # handshake not done / connection gone
        return None
    if not der:
        return None
    return _inspect_der(der)


@functools.lru_cache(maxsize=64)
def _inspect_der(der: bytes) -> CertInfo:
    """`inspect_cert` of a DER certificate, remembered: every API request of a client
    presents the same certificate, and parsing it costs more than the request. Only what
    the certificate says is cached (it cannot change); whether it is revoked is asked of
    the store on every request. Small: API clients are few, and the hub's thousands of
    agents parse theirs once per connection (a big cache would hold ~1 KiB each)."""
    return inspect_cert(der)


# --- helpers ------------------------------------------------------------------------------


def _issue(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    common_name: str,
    role: str,
    validity_s: float,
    eku: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """Build and sign a leaf certificate. Its lifetime is capped at the CA's: a leaf
    outliving its issuer would just fail verification later, confusingly."""
    signer = _check_ca(ca_key, ca_cert)
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r} (expected one of {', '.join(sorted(ROLES))})")
    if not isinstance(validity_s, int | float) or not math.isfinite(validity_s) or validity_s <= 0:
        raise PkiError(f"validity must be a positive number of seconds, not {validity_s!r}")
    now = _now()
    not_before = max(now - datetime.timedelta(seconds=CLOCK_SKEW_S), ca_cert.not_valid_before_utc)
    not_after = min(now + datetime.timedelta(seconds=validity_s), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise PkiError("the CA certificate has expired; cannot issue certificates")
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, role=role))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA keys may do TLS 1.2 RSA key transport; EC keys never need it.
                key_encipherment=isinstance(public, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public = ca_cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise PkiError("unsupported CA public key type") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _check_ca(
    ca_key: CertificateIssuerPrivateKeyTypes, ca_cert: x509.Certificate
) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """Refuse to sign with a key that is not the CA certificate's, or with a non-CA
    certificate: either would produce certificates nobody can verify."""
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"unsupported CA key type {type(ca_key).__name__}")
    try:
        bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise PkiError("the issuing certificate is not a CA (no BasicConstraints)") from None
    if not bc.ca:
        raise PkiError("the issuing certificate is not a CA")
    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise PkiError("the CA private key does not match the CA certificate")
    return ca_key


def _accepted_public_key(public: object) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """Only key types and sizes every TLS peer of ours handles and that are not weak."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP256R1 | ec.SECP384R1):
            raise PkiError(f"EC curve {public.curve.name} not accepted (use P-256 or P-384)")
        return public
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise PkiError(f"RSA key of {public.key_size} bits too small (minimum 2048)")
        return public
    raise PkiError(
        f"public key type {type(public).__name__} not accepted (use EC P-256/P-384 or RSA)"
    )


def _spki(public: object) -> bytes:
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PkiError(f"unsupported public key type {type(public).__name__}")
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str, *, role: str | None) -> x509.Name:
    if not isinstance(common_name, str) or not common_name:
        raise PkiError("common name must be a non-empty string")
    if len(common_name) > _MAX_CN_LEN:
        raise PkiError(f"common name longer than {_MAX_CN_LEN} characters: {common_name!r}")
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if role is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    try:
        return x509.Name(attrs)
    except ValueError as exc:
        raise PkiError(f"invalid subject: {reason(exc)}") from None


def _dns_names(names: Sequence[str]) -> list[str]:
    """Normalise DNS names to lowercase A-labels, deduplicated, order kept."""
    if isinstance(names, str):
        raise PkiError("names must be a sequence of strings, not a single string")
    out: list[str] = []
    for raw in names:
        name = raw.strip().rstrip(".").lower()
        if not name:
            raise PkiError(f"invalid DNS name {raw!r}")
        try:
            name.encode("ascii")
        except UnicodeEncodeError:
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                raise PkiError(f"invalid DNS name {raw!r}") from None
        if name not in out:
            out.append(name)
    return out


def _ip_addresses(ips: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if isinstance(ips, str):
        raise PkiError("ips must be a sequence of strings, not a single string")
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in ips:
        try:
            addr = ipaddress.ip_address(raw.strip().split("%", 1)[0])
        except ValueError:
            raise PkiError(f"invalid IP address {raw!r}") from None
        if addr not in out:
            out.append(addr)
    return out


def _check_days(days: int) -> None:
    if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
        raise PkiError(f"days must be a positive integer, not {days!r}")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
