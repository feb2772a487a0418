"""Hypothesis strategies for protocol v1 records and batches."""

from __future__ import annotations

from hypothesis import strategies as st

from fleetlink_protocols.catalog import SIGNALS
from fleetlink_protocols.codec import Batch
from fleetlink_protocols.limits import MAX_NAME_LEN, MAX_TEXT_LEN
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Entry,
    Event,
    FixMode,
    Health,
    Position,
    Record,
    SignalValue,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TS_NS = st.integers(min_value=0, max_value=2**62)
# msgpack strings are UTF-8: lone surrogates cannot be encoded by any peer.
TEXT = st.characters(blacklist_categories=("Cs",))
NAMES = st.text(TEXT, max_size=MAX_NAME_LEN)
SCALARS = (
    st.booleans()
    | INT64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=MAX_TEXT_LEN)
)
PATHS = st.sampled_from([s.path for s in SIGNALS]) | st.from_regex(
    r"Acme(\.[A-Z][a-zA-Z0-9]{0,10}){1,4}", fullmatch=True
)


def _opt(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float | None]:
    return st.none() | strategy


POSITIONS = st.builds(
    Position,
    ts_wall_ns=TS_NS,
    lat_deg=st.floats(-90, 90),
    lon_deg=st.floats(-180, 180),
    mode=st.sampled_from(FixMode),
    alt_msl_m=_opt(st.floats(-1000, 20_000)),
    speed_mps=_opt(st.floats(0, 350)),
    heading_deg=_opt(st.floats(-720, 720)),
    hdop=_opt(st.floats(0, 99.99)),
    sats_used=st.none() | st.integers(0, 255),
)
SIGNAL_VALUES = st.builds(SignalValue, ts_wall_ns=TS_NS, path=PATHS, value=SCALARS)
DTCS = st.builds(
    Dtc,
    ts_wall_ns=TS_NS,
    source=st.sampled_from(DtcSource),
    code=st.text(TEXT, max_size=MAX_NAME_LEN),
    ecu=st.integers(0, 0x1FFF_FFFF),
    active=st.booleans(),
    spn=st.none() | st.integers(0, 0x7FFFF),
    fmi=st.none() | st.integers(0, 31),
    occurrences=st.none() | st.integers(0, 126),
    lamps=st.none() | st.integers(0, 0xFFFF),
)
EVENTS = st.builds(
    Event, ts_wall_ns=TS_NS, kind=NAMES, data=st.dictionaries(NAMES, SCALARS, max_size=8)
)
HEALTHS = st.builds(
    Health,
    ts_wall_ns=TS_NS,
    counters=st.dictionaries(NAMES, st.integers(0, 2**63 - 1), max_size=10),
)
RECORDS: st.SearchStrategy[Record] = POSITIONS | SIGNAL_VALUES | DTCS | EVENTS | HEALTHS


@st.composite
def batches(draw: st.DrawFn, max_entries: int = 40) -> Batch:
    records = draw(st.lists(RECORDS, min_size=1, max_size=max_entries))
    seqs = sorted(
        draw(st.sets(st.integers(0, 2**63 - 1), min_size=len(records), max_size=len(records)))
    )
    device_id = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True))
    boot_id = draw(st.integers(0, 2**63 - 1))
    return Batch(device_id, boot_id, tuple(Entry(s, r) for s, r in zip(seqs, records, strict=True)))
