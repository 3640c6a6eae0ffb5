"""The tamper-evident audit archive and encrypted message store (issue 5)."""

__all__: list[str] = []
