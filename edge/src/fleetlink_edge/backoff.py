"""Jittered exponential backoff for reconnects: pure, given its random source.

Every failed attempt doubles the ceiling (``initial_s`` * 2**n, capped at ``max_s``); the delay is
drawn between ``(1 - jitter)`` and 1 times that ceiling, so a fleet that lost its broker at the
same instant does not reconnect in lockstep when it comes back.
"""

from __future__ import annotations

from collections.abc import Callable

# A source of floats uniform in [0, 1): random.Random().random in production, fixed in tests.
RandomSource = Callable[[], float]


class Backoff:
    """Delays for consecutive failed attempts; ``reset()`` after a healthy connection."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        random: RandomSource,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.5,
    ) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("backoff needs 0 < initial_s <= max_s")
        if multiplier < 1.0 or not 0.0 <= jitter <= 1.0:
            raise ValueError("backoff needs multiplier >= 1 and 0 <= jitter <= 1")
        self._initial_s = initial_s
        self._max_s = max_s
        self._random = random
        self._multiplier = multiplier
        self._jitter = jitter
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failed attempts since the last reset."""
        return self._attempt

    def ceiling_s(self, attempt: int) -> float:
        """The largest delay for the ``attempt``-th consecutive failure (0-based), in seconds."""
        # Compare exponents rather than computing multiplier**attempt, which overflows a float
        # after a few days of failures at the cap.
        ceiling = self._initial_s
        if self._multiplier == 1.0:
            return ceiling
        for _ in range(attempt):
            ceiling *= self._multiplier
            if ceiling >= self._max_s:
                return self._max_s
        return ceiling

    def next_delay_s(self) -> float:
        """Seconds to wait before the next attempt; counts one more failure."""
        ceiling = self.ceiling_s(self._attempt)
        self._attempt += 1
        draw = min(max(self._random(), 0.0), 1.0)
        return ceiling * (1.0 - self._jitter) + ceiling * self._jitter * draw

    def reset(self) -> None:
        """Start again from ``initial_s`` (call once a connection proved healthy)."""
        self._attempt = 0
