"""Jittered exponential backoff: ceilings, jitter bounds, cap, reset."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetlink_edge.backoff import Backoff


def test_ceiling_doubles_then_caps() -> None:
    b = Backoff(0.5, 60.0, lambda: 1.0)
    assert [b.next_delay_s() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]


def test_lowest_draw_is_half_the_ceiling() -> None:
    b = Backoff(1.0, 10.0, lambda: 0.0)
    assert [b.next_delay_s() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 5.0]


def test_reset_starts_from_initial() -> None:
    b = Backoff(1.0, 100.0, lambda: 1.0)
    for _ in range(5):
        b.next_delay_s()
    assert b.attempt == 5
    b.reset()
    assert b.attempt == 0
    assert b.next_delay_s() == 1.0


def test_no_overflow_after_days_of_failures() -> None:
    b = Backoff(0.5, 60.0, lambda: 1.0)
    for _ in range(100_000):
        delay = b.next_delay_s()
    assert delay == 60.0


def test_no_jitter_and_constant_multiplier() -> None:
    b = Backoff(2.0, 5.0, lambda: 0.3, multiplier=1.0, jitter=0.0)
    assert [b.next_delay_s() for _ in range(3)] == [2.0, 2.0, 2.0]


def test_out_of_range_random_source_is_clamped() -> None:
    assert Backoff(1.0, 1.0, lambda: 7.0).next_delay_s() == 1.0
    assert Backoff(1.0, 1.0, lambda: -3.0).next_delay_s() == 0.5


@pytest.mark.parametrize(
    ("initial", "maximum", "multiplier", "jitter"),
    [(0.0, 1.0, 2.0, 0.5), (2.0, 1.0, 2.0, 0.5), (1.0, 2.0, 0.5, 0.5), (1.0, 2.0, 2.0, 1.5)],
)
def test_invalid_parameters_are_refused(
    initial: float, maximum: float, multiplier: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial, maximum, lambda: 0.0, multiplier=multiplier, jitter=jitter)


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    initial=st.floats(min_value=0.01, max_value=5.0),
    extra=st.floats(min_value=0.0, max_value=300.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_delays_stay_within_jitter_band(
    seed: int, initial: float, extra: float, jitter: float
) -> None:
    rng = random.Random(seed)
    b = Backoff(initial, initial + extra, rng.random, jitter=jitter)
    for attempt in range(40):
        ceiling = b.ceiling_s(attempt)
        delay = b.next_delay_s()
        assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling + 1e-9
        assert ceiling <= initial + extra


def test_seeded_fleet_spreads_out() -> None:
    # Ten devices losing the broker together must not all come back at the same instant.
    delays = {
        round(Backoff(1.0, 60.0, random.Random(i).random).next_delay_s(), 6) for i in range(10)
    }
    assert len(delays) == 10
