"""mssecure: a secure health messaging operator.

Subpackages, one per concern (see docs/ and DESIGN):

- :mod:`mssecure.directory` — the directory of certified addresses of the trust space;
- :mod:`mssecure.crypto` — operator PKI, S/MIME, DKIM, the trust bundle;
- :mod:`mssecure.smtp` — submission and inbound relays, policy, durable queue, delivery;
- :mod:`mssecure.archive` — the tamper-evident audit archive.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
