"""The secure relay: submission and inbound listeners, policy, durable queue, delivery (issue 4)."""

__all__: list[str] = []
