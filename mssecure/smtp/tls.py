"""TLS contexts of the relay: TLS 1.2 or newer everywhere (MSSanté), our relay certificate on every side.

- submission (587 STARTTLS, 465 implicit): our server certificate; a client certificate is asked for (optional)
  and must chain to our own CA — a professional's certificate, which may stand for a password;
- inbound (25): our server certificate; a client certificate is asked for and must chain to a trusted peer's CA
  (the relay then checks it is that peer's *relay* certificate);
- outbound (to a peer's 25): our relay certificate as client certificate; the peer's certificate must chain to the
  CA of its trust bundle and name the relay host of the bundle.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mssecure.crypto.authority import OperatorMaterial

__all__ = ["client_context", "server_context"]


def _pem(certificates: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def _with_our_certificate(context: ssl.SSLContext, material: OperatorMaterial) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(
        material.tls_cert_path,
        material.keystore.key_path("tls"),
        password=material.keystore.master_secret(),
    )
    return context


def server_context(material: OperatorMaterial, client_anchors: Sequence[x509.Certificate]) -> ssl.SSLContext:
    """A server context that asks for a client certificate chained to ``client_anchors`` (none: none accepted)."""
    context = _with_our_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), material)
    if client_anchors:
        context.load_verify_locations(cadata=_pem(client_anchors))
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(material: OperatorMaterial, peer_anchors: Sequence[x509.Certificate]) -> ssl.SSLContext:
    """A client context for a peer relay: verify its certificate against ``peer_anchors`` and its host name."""
    context = _with_our_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), material)
    context.load_verify_locations(cadata=_pem(peer_anchors))
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context
