"""Operator PKI, S/MIME, DKIM and the trust space (issue 3)."""

__all__: list[str] = []
