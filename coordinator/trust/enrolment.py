"""Turning a join token and a CSR into an agent certificate, and renewing it later.

The private key never leaves the agent: the coordinator signs only the CSR's public
key, with the CN forced to the machine id the token was spent on.
"""

from __future__ import annotations

import time

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from coordinator.store.ports import EnrollConflict, EnrollRefused, TrustStore
from coordinator.trust import pki
from proto.enrolment import EnrollRequest, EnrollResponse, machine_id_problem
from proto.tokens import (
    JOIN_KIND,
    TokenFormatError,
    enrolment_refusal,
    parse_token,
    secret_matches,
)


class Enroller:
    def __init__(
        self,
        storage: TrustStore,
        ca_key: CertificateIssuerPrivateKeyTypes,
        ca_cert: x509.Certificate,
        *,
        cert_ttl_s: float,
    ) -> None:
        self.storage = storage
        self.ca_key = ca_key
        self.ca_cert = ca_cert
        self.ca_pem = pki.cert_pem(ca_cert).decode()
        self.cert_ttl_s = cert_ttl_s

    def enroll(self, req: EnrollRequest, hub_urls: list[str]) -> tuple[EnrollResponse, bool]:
        """Raise EnrollRefused (reason for the agent; EnrollConflict for an enrolled
        machine the token may not take over) or return the signed certificate, and
        whether an enrolled machine was re-enrolled (its old certificates revoked).
        `hub_urls` (not empty): every coordinator's hub, this one's first, which is
        also `hub_url`, all that agents older than the list read."""
        problem = machine_id_problem(req.machine_id)
        if problem:
            raise EnrollRefused(problem)
        try:
            token = parse_token(req.token, JOIN_KIND)
        except TokenFormatError as exc:
            raise EnrollRefused(str(exc)) from None
        now = time.time()
        if not secret_matches(token.secret, self.storage.join_token_hash(token.id, now)):
            raise EnrollRefused("unknown join token")
        machine = self.storage.get_machine(req.machine_id)
        refusal = enrolment_refusal(
            req.machine_id,
            self.storage.join_token_binding(token.id),
            enrolled=machine is not None,
            revoked=machine is not None and machine.revoked,
        )
        if refusal is not None:  # checked before signing; again in the transaction
            status, reason = refusal
            raise EnrollConflict(reason) if status == 409 else EnrollRefused(reason)
        cert = self._sign(req.csr_pem, req.machine_id)
        info = pki.inspect_cert(cert)
        replaced = self.storage.enroll(
            token.id, req.machine_id, serial=info.serial, not_after=info.not_after, now=now
        )
        response = EnrollResponse(
            machine_id=req.machine_id,
            cert_pem=pki.cert_pem(cert).decode(),
            ca_pem=self.ca_pem,
            hub_url=hub_urls[0],
            hub_urls=hub_urls,
        )
        return response, replaced

    def renew(self, machine_id: str, csr_pem: str) -> str:
        cert = self._sign(csr_pem, machine_id)
        info = pki.inspect_cert(cert)
        self.storage.set_machine_cert(machine_id, info.serial, info.not_after, time.time())
        return pki.cert_pem(cert).decode()

    def _sign(self, csr_pem: str, machine_id: str) -> x509.Certificate:
        try:
            return pki.sign_csr(
                self.ca_key,
                self.ca_cert,
                csr_pem.encode(),
                common_name=machine_id,
                role=pki.ROLE_AGENT,
                validity_s=self.cert_ttl_s,
            )
        except pki.PkiError as exc:
            raise EnrollRefused(f"certificate request refused: {exc}") from None
