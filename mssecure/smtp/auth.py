"""Credentials of mailbox owners: argon2id password hashes, and the rate limit on failed logins.

The hashes are PHC strings (``$argon2id$v=19$m=...``) as argon2-cffi writes them (RFC 9106); Dovecot
checks the same hash as ``{ARGON2ID}<hash>``. Hashing costs tens of milliseconds on purpose: the servers call
these functions off the event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["FailureLimiter", "hash_password", "verify_password"]

# OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): tens of milliseconds a login, costly to guess at scale.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
# A constant hash to check against when the login is unknown, so unknown and known logins cost the same time.
_DUMMY_HASH = _HASHER.hash("mssecure-unknown-login")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: bytes) -> bool:
    """True when ``password`` matches ``stored``; an unknown login (``stored`` None) costs as much as a known one."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class FailureLimiter:
    """Counts failed logins per key (an address, a client IP) over a sliding window.

    Not thread-safe: one instance per event loop, called from it.
    """

    def __init__(self, *, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._pending: dict[str, int] = {}  # attempts being checked now: they count, so parallel guesses cannot race

    def _recent(self, key: str) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def blocked(self, *keys: str) -> bool:
        return any(len(self._recent(key)) + self._pending.get(key, 0) >= self.limit for key in keys)

    def begin(self, *keys: str) -> None:
        """An attempt starts: it counts against the limit until ``end``."""
        for key in keys:
            self._pending[key] = self._pending.get(key, 0) + 1

    def end(self, *keys: str) -> None:
        for key in keys:
            left = self._pending.get(key, 0) - 1
            if left > 0:
                self._pending[key] = left
            else:
                self._pending.pop(key, None)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            times = self._failures.setdefault(key, deque())
            times.append(now)
            while len(times) > self.limit:  # memory stays bounded per key
                times.popleft()
        if len(self._failures) > 100_000:  # bounded overall: forget what has expired, then the oldest keys
            for key in list(self._failures):
                self._recent(key)
            for key in list(self._failures)[: max(0, len(self._failures) - 100_000)]:
                del self._failures[key]

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
