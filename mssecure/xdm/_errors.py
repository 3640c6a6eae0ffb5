"""The one error of the XDM package (kept apart so every module of the package can raise it without cycles)."""

from __future__ import annotations

from mssecure.errors import MssecureError

__all__ = ["XdmError"]


class XdmError(MssecureError):
    """An XDM package cannot be built, or an arriving one is refused: ``str()`` (and ``reason``) says why, in one line.

    The reason names files of the package but never carries document content or patient data beyond what the
    operator needs to act (a file name, a field name), so it can be logged and archived as it is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
