#!/usr/bin/env python3
"""Independent fixture writer: an lnd KV invoice store made WITHOUT oneway's encoder.

Purpose
-------
oneway's own test fixtures are written by oneway's own encoder, so a decoder bug
that mirrors an encoder bug would go unnoticed. This script is a second,
independent implementation of lnd's on-disk invoice format, written in plain
Python (standard library only) from the format facts in
shared/reference/lnd-invoice-store.md and lnd's Go source
(channeldb/invoices.go, record/amp.go, tlv/, kvdb/sqlbase/, Go's
time.Time.MarshalBinary). Nothing here is shared with the Rust crate.

It writes two files:

* ``lnd-python.sqlite`` -- an lnd "kvdb on SQLite" channel database: one table
  ``channeldb_kv`` (lnd's schema and indexes), journal_mode DELETE, holding
  about 40 invoices that cover the corner cases of the format (see
  ``build_invoices``), deleted-invoice gaps, and unrelated top-level buckets
  (``metadata``, ``open-chan-bucket`` with nested sub-buckets,
  ``closed-chan-bucket``) that a migration must leave alone.
* ``expected.json`` -- the rows lnd's native SQL invoice tables must contain
  after the migration, computed here directly from the Python invoice model
  (never by decoding the bytes written above), plus every row of the unrelated
  buckets so a test can prove they are untouched.

The integration test ``tests/independent_store.rs`` migrates a copy of the
store with the ``oneway`` binary and compares every native table row for row
against ``expected.json``; a second test re-runs this script into a temporary
directory and checks that it reproduces the committed files byte for byte.

Rerun (from the repository root)::

    python3 tests/independent/make_lnd_store.py            # rewrites fixtures/independent/
    python3 tests/independent/make_lnd_store.py --out-dir /tmp/x

The output is deterministic: all "random" bytes come from a SHA-256 counter
generator with a fixed seed (so they do not depend on the Python version's
``random`` module), and the SQLite file is written in one transaction.

Conventions in expected.json
----------------------------
* bytes (BLOB columns, and the TEXT columns ``memo`` / ``payment_request``,
  which hold raw bytes that need not be UTF-8) are lowercase hex strings;
* SQL NULL is JSON null; booleans are JSON true/false (SQLite stores 0/1);
* timestamps are the exact TEXT lnd's SQLite driver writes for a UTC time:
  Go layout ``2006-01-02 15:04:05.999999999-07:00``, e.g.
  ``2024-06-01 12:00:00.5+00:00``; Go's zero time is
  ``0001-01-01 00:00:00+00:00``;
* ``chan_id`` is the decimal text of the u64 short channel id.
"""

import argparse
import hashlib
import json
import os
import sqlite3
import struct
import sys
from datetime import datetime, timedelta
from pathlib import Path

SEED = b"oneway/independent-fixture/seed-2024-06-01"
KV_TABLE = "channeldb_kv"
STORE_NAME = "lnd-python.sqlite"
EXPECTED_NAME = "expected.json"

# Seconds between 0001-01-01T00:00:00Z (Go's internal epoch) and 1970-01-01.
GO_UNIX_TO_INTERNAL = 62135596800

# lnd's invoice / HTLC states.
INV_OPEN, INV_SETTLED, INV_CANCELED, INV_ACCEPTED = 0, 1, 2, 3
HTLC_ACCEPTED, HTLC_CANCELED, HTLC_SETTLED = 0, 1, 2

KEYSEND_TYPE = 5482373484  # record.KeySendType
FEATURE_AMP_REQUIRED = 30


# --------------------------------------------------------------------------
# Deterministic byte source (SHA-256 in counter mode).
# --------------------------------------------------------------------------
class Drbg:
    def __init__(self, seed: bytes):
        self.seed = seed
        self.counter = 0
        self.buf = b""

    def bytes(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += hashlib.sha256(self.seed + struct.pack(">Q", self.counter)).digest()
            self.counter += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def below(self, n: int) -> int:
        """Uniform integer in [0, n)."""
        assert n > 0
        nbytes = (n.bit_length() + 7) // 8 + 1
        limit = (256 ** nbytes // n) * n
        while True:
            v = int.from_bytes(self.bytes(nbytes), "big")
            if v < limit:
                return v % n

    def between(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)


# --------------------------------------------------------------------------
# Primitive encoders (lnd's tlv package and encoding/binary big-endian).
# --------------------------------------------------------------------------
def bigsize(n: int) -> bytes:
    """BigSize: one byte below 0xfd, else a marker and 2/4/8 bytes big-endian."""
    assert 0 <= n < 2 ** 64
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack(">H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack(">I", n)
    return b"\xff" + struct.pack(">Q", n)


def u8(n: int) -> bytes:
    return struct.pack(">B", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def truncated_u32(n: int) -> bytes:
    """tlv.ETUint32T: big-endian with leading zero bytes dropped (0 -> no bytes)."""
    return u32(n).lstrip(b"\x00")


def tlv_stream(records) -> bytes:
    """records: list of (type, value bytes), must be strictly ascending by type."""
    types = [t for t, _ in records]
    assert types == sorted(types) and len(set(types)) == len(types), types
    return b"".join(bigsize(t) + bigsize(len(v)) + v for t, v in records)


def feature_vector(bits) -> bytes:
    """lnwire.RawFeatureVector.EncodeBase256: no length prefix, big-endian bit order."""
    if not bits:
        return b""
    size = max(bits) // 8 + 1
    out = bytearray(size)
    for b in bits:
        out[size - 1 - b // 8] |= 1 << (b % 8)
    return bytes(out)


def go_quo(a: int, b: int) -> int:
    """Go integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def go_rem(a: int, b: int) -> int:
    """Go remainder (sign of the dividend)."""
    return a - go_quo(a, b) * b


class GoTime:
    """A Go time.Time: absolute instant plus the zone it was marshalled in.

    zone is None for the UTC location (offset -1 on the wire), otherwise the
    zone offset in seconds east of UTC (Local/FixedZone).
    """

    def __init__(self, internal_sec: int, nanos: int = 0, zone=None):
        assert 0 <= nanos < 10 ** 9
        self.internal_sec = internal_sec
        self.nanos = nanos
        self.zone = zone

    @classmethod
    def unix(cls, unix_sec: int, nanos: int = 0, zone=None):
        return cls(unix_sec + GO_UNIX_TO_INTERNAL, nanos, zone)

    @classmethod
    def zero(cls):
        return cls(0, 0, None)

    def is_zero(self) -> bool:
        return self.internal_sec == 0 and self.nanos == 0

    def unix_ns(self) -> int:
        return (self.internal_sec - GO_UNIX_TO_INTERNAL) * 10 ** 9 + self.nanos

    def marshal(self) -> bytes:
        """time.Time.MarshalBinary (version 1, or 2 when the offset has seconds)."""
        version = 1
        off_sec = 0
        if self.zone is None:
            off_min = -1
        else:
            off = self.zone
            if go_rem(off, 60) != 0:
                version = 2
                off_sec = go_rem(off, 60)
            off_min = go_quo(off, 60)
            assert off_min != -1 and -32768 <= off_min <= 32767, "Go refuses this offset"
        out = (
            bytes([version])
            + struct.pack(">q", self.internal_sec)
            + struct.pack(">i", self.nanos)
            + struct.pack(">h", off_min)
        )
        if version == 2:
            out += struct.pack(">b", off_sec)
        return out

    def text(self) -> str:
        return timestamp_text(self.internal_sec, self.nanos)


def timestamp_text(internal_sec: int, nanos: int) -> str:
    """The instant in UTC, Go layout 2006-01-02 15:04:05.999999999-07:00."""
    d = datetime(1, 1, 1) + timedelta(seconds=internal_sec)
    s = "%04d-%02d-%02d %02d:%02d:%02d" % (d.year, d.month, d.day, d.hour, d.minute, d.second)
    if nanos:
        s += "." + ("%09d" % nanos).rstrip("0")
    return s + "+00:00"


def ns_text(unix_ns: int) -> str:
    """Timestamp text of an HTLC Unix-nanosecond value (0 = Go's zero time)."""
    if unix_ns == 0:
        return timestamp_text(0, 0)
    sec, nanos = divmod(unix_ns, 10 ** 9)
    return timestamp_text(sec + GO_UNIX_TO_INTERNAL, nanos)


# --------------------------------------------------------------------------
# Invoice model.
# --------------------------------------------------------------------------
class Htlc:
    def __init__(self, chan_id, htlc_id, amt, accept_height, accept_ns, resolve_ns,
                 expiry_height, state, mpp_total=0, amp=None, custom=None):
        self.chan_id = chan_id
        self.htlc_id = htlc_id
        self.amt = amt
        self.accept_height = accept_height
        self.accept_ns = accept_ns
        self.resolve_ns = resolve_ns
        self.expiry_height = expiry_height
        self.state = state
        self.mpp_total = mpp_total
        # amp: dict(root_share, set_id, child_index, hash, preimage or None)
        self.amp = amp
        self.custom = sorted(custom or [])

    def stream(self) -> bytes:
        recs = [
            (1, u64(self.chan_id)),
            (3, u64(self.htlc_id)),
            (5, u64(self.amt)),
            (7, u32(self.accept_height)),
            (9, u64(self.accept_ns)),
            (11, u64(self.resolve_ns)),
            (13, u32(self.expiry_height)),
            (15, u8(self.state)),
            (17, u64(self.mpp_total)),
        ]
        if self.amp is not None:
            a = self.amp
            recs.append((19, a["root_share"] + a["set_id"] + truncated_u32(a["child_index"])))
            recs.append((21, a["hash"]))
            if a["preimage"] is not None:
                recs.append((23, a["preimage"]))
        for t, v in self.custom:
            assert t >= 65536
            recs.append((t, v))
        return tlv_stream(recs)

    def expected(self) -> dict:
        return {
            "chan_id": str(self.chan_id),
            "htlc_id": self.htlc_id,
            "amount_msat": self.amt,
            "total_mpp_msat": self.mpp_total if self.mpp_total else None,
            "accept_height": self.accept_height,
            "accept_time": ns_text(self.accept_ns),
            "expiry_height": self.expiry_height,
            "state": self.state,
            "resolve_time": ns_text(self.resolve_ns) if self.resolve_ns else None,
            "custom_records": [{"key": t, "value": v.hex()} for t, v in self.custom],
        }


def htlc_records(htlcs) -> bytes:
    """A sequence of u64-BE-length-prefixed HTLC TLV streams."""
    out = b""
    for h in htlcs:
        s = h.stream()
        out += u64(len(s)) + s
    return out


class AmpSet:
    """One AMP sub-invoice (an entry of body record 15) and its HTLCs."""

    def __init__(self, set_id, state, htlcs, settle_time=None):
        self.set_id = set_id
        self.state = state
        self.htlcs = htlcs
        self.settle_time = settle_time  # GoTime or None; settle index assigned later
        self.settle_index = 0

    @property
    def settle_date(self):
        return self.settle_time if self.settle_time is not None else GoTime.zero()

    def amt_paid(self) -> int:
        # As lnd counts it: every HTLC of the set that was not canceled.
        return sum(h.amt for h in self.htlcs if h.state != HTLC_CANCELED)

    def state_bytes(self) -> bytes:
        keys = [(h.chan_id, h.htlc_id) for h in self.htlcs]
        circuit = bigsize(len(keys)) + b"".join(u64(c) + u64(i) for c, i in keys)
        return tlv_stream([
            (0, self.set_id),
            (1, u8(self.state)),
            (2, u64(self.settle_index)),
            (3, self.settle_date.marshal()),
            (4, circuit),
            (5, u64(self.amt_paid())),
        ])


# Body layouts.
LAYOUT_MODERN = "modern"            # records 0..15 (15 = AMP state, count 0 when not AMP)
LAYOUT_PRE_AMP = "pre_amp_state"    # records 0..14, no record 15 (before lnd 0.14)
LAYOUT_OLD = "old_stops_at_9"       # records 0..9 only (before payment addr/features/state)


class Invoice:
    def __init__(self, label, num, **kw):
        self.label = label
        self.num = num
        self.add_index = num + 1
        self.layout = kw.pop("layout", LAYOUT_MODERN)
        self.memo = kw.pop("memo", b"")
        self.payreq = kw.pop("payreq", b"")
        self.created = kw.pop("created")
        self.settle_time = kw.pop("settle_time", None)
        self.settle_index = 0
        self.preimage = kw.pop("preimage", None)      # None = unknown (32 zero bytes)
        self.payment_hash = kw.pop("payment_hash", None)
        self.value = kw.pop("value", 0)
        self.cltv = kw.pop("cltv", 80)
        self.expiry_ns = kw.pop("expiry_ns", 86400 * 10 ** 9)
        self.payment_addr = kw.pop("payment_addr", bytes(32))
        self.features = sorted(kw.pop("features", []))
        self.state = kw.pop("state", INV_OPEN)
        self.amt_paid = kw.pop("amt_paid", None)
        self.hodl = kw.pop("hodl", False)
        self.htlcs = kw.pop("htlcs", [])              # inline HTLCs (non-AMP, legacy AMP)
        self.amp_sets = kw.pop("amp_sets", None)      # modern AMP: list of AmpSet
        self.deleted = kw.pop("deleted", False)
        assert not kw, kw
        if self.preimage is not None:
            self.payment_hash = hashlib.sha256(self.preimage).digest()
        assert self.payment_hash is not None and len(self.payment_hash) == 32
        if self.amt_paid is None:
            # As lnd counts it: every HTLC that was not canceled.
            self.amt_paid = sum(h.amt for h in self.all_htlcs() if h.state != HTLC_CANCELED)
        if self.layout == LAYOUT_OLD:
            # Fields that do not exist in this layout read back as zero values.
            assert self.payment_addr == bytes(32) and not self.features
            assert self.state == INV_OPEN and self.amt_paid == 0 and not self.hodl
            assert not self.htlcs
        if self.amp_sets is not None:
            assert self.layout == LAYOUT_MODERN and FEATURE_AMP_REQUIRED in self.features
            assert not self.htlcs

    @property
    def settle_date(self):
        return self.settle_time if self.settle_time is not None else GoTime.zero()

    def is_amp(self) -> bool:
        return FEATURE_AMP_REQUIRED in self.features

    def is_legacy_amp(self) -> bool:
        return self.is_amp() and self.amp_sets is None

    def all_htlcs(self):
        if self.amp_sets is not None:
            return [h for s in self.amp_sets for h in s.htlcs]
        return list(self.htlcs)

    def body(self) -> bytes:
        recs = [
            (0, self.memo),
            (1, self.payreq),
            (2, self.created.marshal()),
            (3, self.settle_date.marshal()),
            (4, u64(self.add_index)),
            (5, u64(self.settle_index)),
            (6, self.preimage if self.preimage is not None else bytes(32)),
            (7, u64(self.value)),
            (8, u32(self.cltv)),
            (9, u64(self.expiry_ns)),
        ]
        if self.layout in (LAYOUT_MODERN, LAYOUT_PRE_AMP):
            recs += [
                (10, self.payment_addr),
                (11, feature_vector(self.features)),
                (12, u8(self.state)),
                (13, u64(self.amt_paid)),
                (14, u8(1 if self.hodl else 0)),
            ]
        if self.layout == LAYOUT_MODERN:
            # lnd's serializeInvoice always writes the AMP state record; for a
            # non-AMP invoice it is an empty map: BigSize count 0.
            sets = self.amp_sets or []
            state = bigsize(len(sets))
            for s in sets:
                inner = s.state_bytes()
                state += bigsize(len(inner)) + inner
            recs.append((15, state))
        return tlv_stream(recs)

    def value_bytes(self) -> bytes:
        body = self.body()
        out = u64(len(body)) + body
        if self.amp_sets is None:
            out += htlc_records(self.htlcs)
        return out

    # ---- expected native rows --------------------------------------------
    def expected(self) -> dict:
        inv = {
            "id": self.add_index,
            "hash": self.payment_hash.hex(),
            "preimage": self.preimage.hex() if self.preimage is not None else None,
            "settle_index": self.settle_index if self.settle_index else None,
            "settled_at": None if self.settle_date.is_zero() else self.settle_date.text(),
            "memo": self.memo.hex() if self.memo else None,
            "amount_msat": self.value,
            "cltv_delta": self.cltv,
            "expiry": self.expiry_ns // 10 ** 9,
            "payment_addr": self.payment_addr.hex() if any(self.payment_addr) else None,
            "payment_request": self.payreq.hex() if self.payreq else None,
            "payment_request_hash": hashlib.sha256(self.payreq).hexdigest() if self.payreq else None,
            "state": self.state,
            "amount_paid_msat": self.amt_paid,
            "is_amp": self.is_amp(),
            "is_hodl": self.hodl,
            "is_keysend": (not self.payreq) and not self.is_amp(),
            "created_at": self.created.text(),
        }
        htlcs = [h.expected() for h in self.all_htlcs()]

        subs, amp_htlcs = [], []
        if self.amp_sets is not None:
            groups = [(s.set_id, s.htlcs, s.state, s.settle_date, s.settle_index)
                      for s in self.amp_sets]
        elif self.is_amp():
            # Legacy AMP: sets rebuilt by grouping the inline HTLCs by set id.
            order, by_set = [], {}
            for h in self.htlcs:
                sid = h.amp["set_id"]
                if sid not in by_set:
                    order.append(sid)
                    by_set[sid] = []
                by_set[sid].append(h)
            groups = []
            for sid in order:
                states = {h.state for h in by_set[sid]}
                if HTLC_SETTLED in states:
                    st = 2
                elif HTLC_ACCEPTED in states:
                    st = 0
                else:
                    st = 1
                groups.append((sid, by_set[sid], st, GoTime.zero(), 0))
        else:
            groups = []
        for sid, hs, st, sdate, sidx in groups:
            if hs:
                created = ns_text(min(h.accept_ns for h in hs))
            else:
                created = GoTime.zero().text()
            subs.append({
                "set_id": sid.hex(),
                "state": st,
                "created_at": created,
                "settled_at": None if sdate.is_zero() else sdate.text(),
                "settle_index": sidx if sidx else None,
            })
            for h in hs:
                a = h.amp
                amp_htlcs.append({
                    "set_id": sid.hex(),
                    "chan_id": str(h.chan_id),
                    "htlc_id": h.htlc_id,
                    "root_share": a["root_share"].hex(),
                    "child_index": a["child_index"],
                    "hash": a["hash"].hex(),
                    "preimage": a["preimage"].hex() if a["preimage"] is not None else None,
                })
        return {
            "label": self.label,
            "invoice_num": self.num,
            "layout": self.layout,
            "invoice": inv,
            "features": list(self.features),
            "htlcs": htlcs,
            "amp_sub_invoices": subs,
            "amp_sub_invoice_htlcs": amp_htlcs,
        }


# --------------------------------------------------------------------------
# The invoices.
# --------------------------------------------------------------------------
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
STD_FEATURES = [9, 14, 17]          # tlv-onion opt, payment-addr req, mpp opt
BASE_UNIX = 1717200000              # 2024-06-01 00:00:00 UTC


class Builder:
    def __init__(self):
        self.rng = Drbg(SEED)
        self.next_htlc_id = {}

    def b32(self) -> bytes:
        return self.rng.bytes(32)

    def payreq(self, amt_sat: int, extra: int = 0) -> bytes:
        n = 290 + extra + self.rng.below(60)
        body = "".join(BECH32[self.rng.below(32)] for _ in range(n))
        return ("lnbc%dn1p" % amt_sat).encode() + body.encode()

    def scid(self, block=None, alias=False) -> int:
        if alias:
            block = 16_000_000 + self.rng.below(100_000)   # lnd's alias range: > 2^63
        elif block is None:
            block = self.rng.between(700_000, 860_000)
        tx = self.rng.below(3000)
        out = self.rng.below(4)
        return (block << 40) | (tx << 16) | out

    def htlc(self, chan, amt, accept_ns, state, resolve_ns=None, mpp_total=0,
             amp=None, custom=None, accept_height=None):
        hid = self.next_htlc_id.get(chan, self.rng.below(500))
        self.next_htlc_id[chan] = hid + 1 + self.rng.below(3)
        if accept_height is None:
            accept_height = 848_000 + self.rng.below(5000)
        if resolve_ns is None:
            resolve_ns = 0 if state == HTLC_ACCEPTED else accept_ns + self.rng.between(10 ** 6, 9 * 10 ** 9)
        return Htlc(chan, hid, amt, accept_height, accept_ns, resolve_ns,
                    accept_height + 80 + self.rng.below(60), state, mpp_total, amp, custom)

    def amp_data(self, set_id, root_share, child_index, with_preimage):
        pre = self.b32()
        return {
            "root_share": root_share,
            "set_id": set_id,
            "child_index": child_index,
            "hash": hashlib.sha256(pre).digest(),
            "preimage": pre if with_preimage else None,
        }


def t(day: float, nanos: int = 0, zone=None) -> GoTime:
    """A time `day` days after BASE_UNIX."""
    return GoTime.unix(BASE_UNIX + int(day * 86400), nanos, zone)


def ns(g: GoTime, plus_sec: float = 0.0, extra_ns: int = 0) -> int:
    return g.unix_ns() + int(plus_sec * 10 ** 9) + extra_ns


def build_invoices(bld: Builder):
    rng = bld.rng
    inv = []
    chan_a = bld.scid(block=800_123)
    chan_b = bld.scid(block=812_456)
    chan_c = bld.scid(block=845_001)
    chan_alias = bld.scid(alias=True)
    assert chan_alias >= 2 ** 63

    def add(label, **kw):
        num = len(inv)
        i = Invoice(label, num, **kw)
        inv.append(i)
        return i

    # 0: open, plain BOLT11 invoice.
    c = t(0.1, 123456789)
    add("open-plain", memo=b"coffee", payreq=bld.payreq(2500), created=c,
        preimage=bld.b32(), value=2_500_000, cltv=80, expiry_ns=3600 * 10 ** 9,
        payment_addr=bld.b32(), features=STD_FEATURES)

    # 1: settled by one legacy (non-MPP) HTLC.
    c = t(0.5, 500_000_000)
    s = t(0.52, 1)
    h = bld.htlc(chan_a, 10_000_000, ns(c, 60), HTLC_SETTLED, resolve_ns=ns(s))
    add("settled-single-htlc", memo=b"book", payreq=bld.payreq(10000), created=c,
        settle_time=s, preimage=bld.b32(), value=10_000_000, cltv=40,
        payment_addr=bld.b32(), features=STD_FEATURES, state=INV_SETTLED, htlcs=[h])

    # 2: settled MPP: two settled parts and one earlier part that timed out.
    c = t(1.0, 120_000_000)
    s = t(1.01)
    total = 50_000_000
    hs = [
        bld.htlc(chan_a, 20_000_000, ns(c, 30), HTLC_CANCELED, mpp_total=total),
        bld.htlc(chan_b, 30_000_000, ns(c, 200), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=total),
        bld.htlc(chan_c, 20_000_000, ns(c, 201, 7), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=total),
    ]
    add("settled-mpp-three-htlcs", memo=b"mpp payment", payreq=bld.payreq(50000), created=c,
        settle_time=s, preimage=bld.b32(), value=total, payment_addr=bld.b32(),
        features=STD_FEATURES, state=INV_SETTLED, htlcs=hs)

    # 3: canceled, with its canceled HTLC.
    c = t(1.5)
    h = bld.htlc(chan_b, 7_000, ns(c, 5), HTLC_CANCELED)
    add("canceled-with-htlc", memo=b"canceled order", payreq=bld.payreq(7), created=c,
        preimage=bld.b32(), value=7_000, payment_addr=bld.b32(), features=STD_FEATURES,
        state=INV_CANCELED, htlcs=[h])

    # 4: accepted hodl invoice, preimage unknown (hash only in paymenthashes).
    c = t(2.0, 999_999_999)
    h = bld.htlc(chan_c, 123_456, ns(c, 12), HTLC_ACCEPTED, mpp_total=123_456)
    add("accepted-hodl-unknown-preimage", memo=b"hodl accepted", payreq=bld.payreq(123),
        created=c, payment_hash=bld.b32(), value=123_456, payment_addr=bld.b32(),
        features=STD_FEATURES, state=INV_ACCEPTED, hodl=True, htlcs=[h])

    # 5: open hodl invoice, preimage unknown, no HTLCs.
    c = t(2.2)
    add("open-hodl-unknown-preimage", memo=b"hodl open", payreq=bld.payreq(1), created=c,
        payment_hash=bld.b32(), value=1_000, payment_addr=bld.b32(), features=STD_FEATURES,
        hodl=True)

    # 6: keysend: no payment request, zero payment address, no features; the HTLC
    #    carries the keysend preimage record plus other custom records, one of
    #    whose types needs the 0xff (8-byte) BigSize form.
    c = t(2.5, 42)
    pre = bld.b32()
    h = bld.htlc(chan_a, 21_000, ns(c, 0, 1000), HTLC_SETTLED, resolve_ns=ns(c, 0, 5000),
                 custom=[(65537, b"hello from keysend"), (2 ** 32 + 5, u64(0xDEADBEEF)),
                         (KEYSEND_TYPE, pre)])
    add("keysend-settled", created=c, settle_time=GoTime.unix(c.internal_sec - GO_UNIX_TO_INTERNAL, 5000),
        preimage=pre, value=21_000, cltv=40, state=INV_SETTLED, htlcs=[h])

    # 7, 8: deleted later (gaps in invoice numbers and add indexes). 7 is
    #    settled last of all, so the settle-index bucket's sequence is higher
    #    than any settle index that survives.
    c = t(3.0)
    h = bld.htlc(chan_b, 5_000, ns(c, 10), HTLC_SETTLED, resolve_ns=ns(c, 11))
    add("deleted-settled", memo=b"deleted", payreq=bld.payreq(5), created=c,
        settle_time=t(60.0), preimage=bld.b32(), value=5_000, payment_addr=bld.b32(),
        features=STD_FEATURES, state=INV_SETTLED, htlcs=[h], deleted=True)
    add("deleted-open", memo=b"deleted too", payreq=bld.payreq(6), created=t(3.1),
        preimage=bld.b32(), value=6_000, payment_addr=bld.b32(), features=STD_FEATURES,
        deleted=True)

    # 9: HTLC custom record of 300 bytes (length needs the 0xfd form).
    c = t(3.5, 1_000)
    s = t(3.51)
    h = bld.htlc(chan_c, 99_000, ns(c, 3), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=99_000,
                 custom=[(65540, rng.bytes(300)), (70000, b"\x00")])
    add("settled-htlc-300-byte-custom-record", memo=b"big record", payreq=bld.payreq(99),
        created=c, settle_time=s, preimage=bld.b32(), value=99_000, payment_addr=bld.b32(),
        features=STD_FEATURES, state=INV_SETTLED, htlcs=[h])

    # 10: modern AMP invoice (with a payment request), two sets: one settled
    #     (child indexes 0 and 300), one canceled.
    c = t(4.0, 250_000_000)
    set_a, set_b = bld.b32(), bld.b32()
    root_a, root_b = bld.b32(), bld.b32()
    sa_settle = t(4.02, 77)
    ha = [
        bld.htlc(chan_a, 400_000, ns(c, 100, 5), HTLC_SETTLED, resolve_ns=ns(sa_settle),
                 mpp_total=1_000_000, amp=bld.amp_data(set_a, root_a, 0, True)),
        bld.htlc(chan_b, 600_000, ns(c, 99), HTLC_SETTLED, resolve_ns=ns(sa_settle),
                 mpp_total=1_000_000, amp=bld.amp_data(set_a, root_a, 300, True),
                 custom=[(65539, b""), (65541, b"amp-tag")]),
    ]
    hb = [
        bld.htlc(chan_c, 250_000, ns(c, 4000), HTLC_CANCELED, mpp_total=1_000_000,
                 amp=bld.amp_data(set_b, root_b, 1, False)),
    ]
    add("amp-two-sets", memo=b"amp invoice", payreq=bld.payreq(0), created=c, payment_hash=bld.b32(),
        value=0, payment_addr=bld.b32(), features=STD_FEATURES + [FEATURE_AMP_REQUIRED],
        amp_sets=[AmpSet(set_b, HTLC_CANCELED, hb),
                  AmpSet(set_a, HTLC_SETTLED, ha, settle_time=sa_settle)])

    # 11: spontaneous AMP (no payment request), three sets: settled (child
    #     index 70000 -> 3 bytes), accepted (0x80000001 -> 4 bytes, 5 -> 1 byte),
    #     and a canceled set without any HTLCs.
    c = t(4.5, 10)
    s1, s2, s3 = bld.b32(), bld.b32(), bld.b32()
    r1, r2 = bld.b32(), bld.b32()
    s1_settle = t(4.51, 0, zone=3600)
    h1 = [bld.htlc(chan_alias, 333_000, ns(c, 50), HTLC_SETTLED, resolve_ns=ns(s1_settle),
                   mpp_total=333_000, amp=bld.amp_data(s1, r1, 70000, True),
                   custom=[(KEYSEND_TYPE + 1, b"x")])]
    h2 = [
        bld.htlc(chan_a, 100_000, ns(c, 900, 1), HTLC_ACCEPTED, mpp_total=150_000,
                 amp=bld.amp_data(s2, r2, 0x80000001, True)),
        bld.htlc(chan_b, 50_000, ns(c, 900), HTLC_ACCEPTED, mpp_total=150_000,
                 amp=bld.amp_data(s2, r2, 5, False)),
    ]
    add("amp-three-sets-spontaneous", created=c, payment_hash=bld.b32(), value=0,
        payment_addr=bld.b32(), features=[FEATURE_AMP_REQUIRED, 9, 14],
        amp_sets=[AmpSet(s2, HTLC_ACCEPTED, h2),
                  AmpSet(s1, HTLC_SETTLED, h1, settle_time=s1_settle),
                  AmpSet(s3, HTLC_CANCELED, [])])

    # 12: legacy AMP invoice (before lnd stored AMP state / per-set HTLCs): AMP
    #     feature bit, no record 15, HTLCs inline with AMP records; two sets,
    #     one settled (with one canceled shard in it), one canceled. The parent
    #     carries the settlement.
    c = t(5.0, 5)
    x, y = bld.b32(), bld.b32()
    rx, ry = bld.b32(), bld.b32()
    s = t(5.01, 6)
    hs = [
        bld.htlc(chan_a, 70_000, ns(c, 20), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=100_000,
                 amp=bld.amp_data(x, rx, 0, True)),
        bld.htlc(chan_b, 30_000, ns(c, 21), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=100_000,
                 amp=bld.amp_data(x, rx, 1, True)),
        bld.htlc(chan_c, 10_000, ns(c, 15), HTLC_CANCELED, mpp_total=100_000,
                 amp=bld.amp_data(x, rx, 2, False)),
        bld.htlc(chan_c, 40_000, ns(c, 5), HTLC_CANCELED, mpp_total=40_000,
                 amp=bld.amp_data(y, ry, 0, False)),
    ]
    add("legacy-amp-settled", memo=b"legacy amp", created=c, settle_time=s,
        payment_hash=bld.b32(), value=0, payment_addr=bld.b32(),
        features=[FEATURE_AMP_REQUIRED, 9, 14, 17], state=INV_SETTLED, htlcs=hs,
        layout=LAYOUT_PRE_AMP)

    # 13: legacy AMP invoice, accepted: one set with an accepted and a canceled
    #     shard (-> accepted), one set with only a canceled shard (-> canceled).
    c = t(5.5)
    x, y = bld.b32(), bld.b32()
    rx, ry = bld.b32(), bld.b32()
    hs = [
        bld.htlc(chan_b, 11_000, ns(c, 8), HTLC_CANCELED, mpp_total=22_000,
                 amp=bld.amp_data(x, rx, 0, False)),
        bld.htlc(chan_a, 22_000, ns(c, 30), HTLC_ACCEPTED, mpp_total=22_000,
                 amp=bld.amp_data(x, rx, 1, True)),
        bld.htlc(chan_a, 9_000, ns(c, 2), HTLC_CANCELED, mpp_total=9_000,
                 amp=bld.amp_data(y, ry, 7, False)),
    ]
    add("legacy-amp-accepted", created=c, payment_hash=bld.b32(), value=0,
        payment_addr=bld.b32(), features=[FEATURE_AMP_REQUIRED], state=INV_ACCEPTED,
        hodl=True, htlcs=hs, layout=LAYOUT_PRE_AMP)

    # 14: old invoice whose stream stops at type 9 (no payment address,
    #     features, state, amount paid, hodl flag, AMP state).
    add("old-format-stops-at-type-9", memo=b"from 2018", payreq=bld.payreq(1000),
        created=GoTime.unix(1530000000, 0, zone=7200), preimage=bld.b32(), value=1_000_000,
        cltv=144, expiry_ns=3600 * 10 ** 9, layout=LAYOUT_OLD)

    # 15: unicode memo.
    add("memo-unicode", memo="☕ Café — 日本語 🚀 ünïcödé".encode("utf-8"),
        payreq=bld.payreq(3), created=t(6.0, 1), preimage=bld.b32(), value=3_000,
        payment_addr=bld.b32(), features=STD_FEATURES)

    # 16: memo that is not valid UTF-8.
    add("memo-invalid-utf8", memo=b"\xff\xfe memo", payreq=bld.payreq(4), created=t(6.5),
        preimage=bld.b32(), value=4_000, payment_addr=bld.b32(), features=STD_FEATURES)

    # 17: Go time version 2 (zone +05:30:17), settled with a v1 +05:30 settle date.
    c = t(7.0, 314_159_265, zone=5 * 3600 + 30 * 60 + 17)
    s = t(7.001, 271_828_182, zone=5 * 3600 + 30 * 60)
    h = bld.htlc(chan_c, 8_000, ns(c, 1), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=8_000)
    add("gotime-v2-offset-0530-17", memo=b"v2 time", payreq=bld.payreq(8), created=c,
        settle_time=s, preimage=bld.b32(), value=8_000, payment_addr=bld.b32(),
        features=STD_FEATURES, state=INV_SETTLED, htlcs=[h])

    # 18: negative zone offsets (v1): created at -07:00, settled at -03:00,
    #     instants chosen so the local date differs from the UTC date.
    c = GoTime.unix(BASE_UNIX + 8 * 86400 - 3600, 5, zone=-7 * 3600)
    s = GoTime.unix(BASE_UNIX + 8 * 86400 + 60, 0, zone=-3 * 3600)
    h = bld.htlc(chan_a, 9_000, ns(c, 30), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=9_000)
    add("gotime-negative-offset", memo=b"west", payreq=bld.payreq(9), created=c, settle_time=s,
        preimage=bld.b32(), value=9_000, payment_addr=bld.b32(), features=STD_FEATURES,
        state=INV_SETTLED, htlcs=[h])

    # 19: v2 time with a negative offset that has seconds (New York LMT, -4:56:02).
    add("gotime-v2-negative-lmt", memo=b"lmt", payreq=bld.payreq(10), created=t(8.5, 900, zone=-(4 * 3600 + 56 * 60 + 2)),
        preimage=bld.b32(), value=10_000, payment_addr=bld.b32(), features=STD_FEATURES)

    # 20: a Local zone whose offset is 0 (offset minutes 0 on the wire, not -1).
    add("gotime-local-zone-offset-zero", memo=b"local utc", payreq=bld.payreq(11),
        created=t(9.0, 100, zone=0), preimage=bld.b32(), value=11_000,
        payment_addr=bld.b32(), features=STD_FEATURES)

    # 21: features with a high bit (105): 14-byte vector.
    add("features-high-bit-105", memo=b"features", payreq=bld.payreq(12), created=t(9.5),
        preimage=bld.b32(), value=12_000, payment_addr=bld.b32(),
        features=STD_FEATURES + [25, 105])

    # 22: an odd expiry (lnd only ever stores whole seconds: payment requests
    #     carry seconds, and lnd's own migration aborts on a sub-second expiry
    #     because its read-back comparison would differ).
    add("expiry-odd-seconds", memo=b"expiry", payreq=bld.payreq(13), created=t(10.0),
        preimage=bld.b32(), value=13_000, expiry_ns=123_457 * 10 ** 9,
        payment_addr=bld.b32(), features=STD_FEATURES)

    # 23: zero-amount invoice paid with a donation.
    c = t(10.5)
    s = t(10.6)
    h = bld.htlc(chan_b, 5_000_000, ns(c, 77), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=5_000_000)
    add("zero-amount-donation", memo=b"tip jar", payreq=bld.payreq(0), created=c, settle_time=s,
        preimage=bld.b32(), value=0, payment_addr=bld.b32(), features=STD_FEATURES,
        state=INV_SETTLED, htlcs=[h])

    # 24: an HTLC whose accept time is zero (Go zero time).
    c = t(11.0)
    h = bld.htlc(chan_c, 1_500, 0, HTLC_CANCELED, resolve_ns=ns(c, 600), accept_height=0)
    add("htlc-zero-accept-time", memo=b"zero accept", payreq=bld.payreq(15), created=c,
        preimage=bld.b32(), value=15_000, payment_addr=bld.b32(), features=STD_FEATURES,
        htlcs=[h])

    # 25: settled through an alias SCID (u64 above 2^63).
    c = t(11.5)
    s = t(11.55)
    h = bld.htlc(chan_alias, 16_000, ns(c, 1), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=16_000)
    add("alias-scid-htlc", memo=b"alias", payreq=bld.payreq(16), created=c, settle_time=s,
        preimage=bld.b32(), value=16_000, payment_addr=bld.b32(), features=STD_FEATURES,
        state=INV_SETTLED, htlcs=[h])

    # 26: very large amount (21M BTC in msat) and large CLTV delta.
    add("huge-amount", memo=b"whale", payreq=bld.payreq(2_100_000_000_000_000), created=t(12.0),
        preimage=bld.b32(), value=2_100_000_000_000_000_000, cltv=2016,
        expiry_ns=365 * 86400 * 10 ** 9, payment_addr=bld.b32(), features=STD_FEATURES)

    # 27: maximum-length memo (1024 bytes).
    c = t(12.5)
    s = t(12.7)
    h = bld.htlc(chan_a, 17_000, ns(c, 2), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=17_000)
    add("long-memo-1024", memo=(b"long memo " * 103)[:1024], payreq=bld.payreq(17, 200),
        created=c, settle_time=s, preimage=bld.b32(), value=17_000, payment_addr=bld.b32(),
        features=STD_FEATURES, state=INV_SETTLED, htlcs=[h])

    # 28: hodl invoice settled after the preimage was supplied.
    c = t(13.0)
    s = t(13.2)
    h = bld.htlc(chan_b, 18_000, ns(c, 9), HTLC_SETTLED, resolve_ns=ns(s), mpp_total=18_000)
    add("hodl-settled-known-preimage", memo=b"hodl settled", payreq=bld.payreq(18), created=c,
        settle_time=s, preimage=bld.b32(), value=18_000, payment_addr=bld.b32(),
        features=STD_FEATURES, state=INV_SETTLED, hodl=True, htlcs=[h])

    # 29: hodl invoice canceled, preimage never known.
    c = t(13.5)
    h = bld.htlc(chan_c, 19_000, ns(c, 9), HTLC_CANCELED, mpp_total=19_000)
    add("hodl-canceled-unknown-preimage", memo=b"hodl canceled", payreq=bld.payreq(19), created=c,
        payment_hash=bld.b32(), value=19_000, payment_addr=bld.b32(), features=STD_FEATURES,
        state=INV_CANCELED, hodl=True, htlcs=[h])

    # 30: a non-AMP invoice in the pre-AMP layout (records 0..14, no 15).
    c = t(14.0)
    s = t(14.1)
    h = bld.htlc(chan_a, 20_000, ns(c, 4), HTLC_SETTLED, resolve_ns=ns(s))
    add("pre-amp-layout-settled", memo=b"2020 invoice", payreq=bld.payreq(20), created=c,
        settle_time=s, preimage=bld.b32(), value=20_000, payment_addr=bld.b32(),
        features=[9, 15], state=INV_SETTLED, htlcs=[h], layout=LAYOUT_PRE_AMP)

    # 31..41: ordinary invoices in assorted states.
    chans = [chan_a, chan_b, chan_c]
    while len(inv) < 42:
        k = len(inv)
        c = t(15.0 + k * 0.37, rng.below(10 ** 9) if k % 3 else 0)
        value = rng.between(1, 5_000_000) * 1000
        kind = k % 4
        kw = dict(memo=("filler invoice #%d" % k).encode(), payreq=bld.payreq(value // 1000),
                  created=c, preimage=bld.b32(), value=value, payment_addr=bld.b32(),
                  features=STD_FEATURES, cltv=rng.between(18, 200),
                  expiry_ns=rng.between(60, 604800) * 10 ** 9)
        if kind == 0:
            add("filler-open-%d" % k, **kw)
        elif kind == 1:
            s = GoTime.unix(c.internal_sec - GO_UNIX_TO_INTERNAL + rng.between(1, 7200),
                            rng.below(10 ** 9) // 1000 * 1000)
            parts = 1 + rng.below(2)
            amts = [value // parts] * parts
            amts[-1] += value - sum(amts)
            hs = [bld.htlc(chans[(k + j) % 3], a, ns(c, 1 + j), HTLC_SETTLED,
                           resolve_ns=ns(s), mpp_total=value) for j, a in enumerate(amts)]
            add("filler-settled-%d" % k, settle_time=s, state=INV_SETTLED, htlcs=hs, **kw)
        elif kind == 2:
            hs = [bld.htlc(chans[k % 3], value, ns(c, 3), HTLC_CANCELED, mpp_total=value)]
            add("filler-canceled-%d" % k, state=INV_CANCELED, htlcs=hs, **kw)
        else:
            hs = [bld.htlc(chans[k % 3], value // 2, ns(c, 3), HTLC_CANCELED, mpp_total=value)]
            add("filler-open-timed-out-part-%d" % k, htlcs=hs, **kw)

    assert [i.num for i in inv if i.deleted] == [7, 8]
    return inv


def assign_settle_indexes(invoices):
    """Settle indexes are handed out in the order settlements happened.

    Returns the settle-index bucket entries [(index, value)] (deleted invoices
    included, as they existed before deletion) and the last index handed out.
    """
    events = []
    for inv in invoices:
        if inv.state == INV_SETTLED:
            events.append((inv.settle_date.unix_ns(), inv.num, b"", inv))
        for s in inv.amp_sets or []:
            if s.state == HTLC_SETTLED:
                events.append((s.settle_date.unix_ns(), inv.num, s.set_id, s))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    entries = []
    for idx, (_, num, set_id, obj) in enumerate(events, start=1):
        obj.settle_index = idx
        entries.append((idx, u32(num) + set_id, num))
    return entries, len(events)


# --------------------------------------------------------------------------
# The KV store.
# --------------------------------------------------------------------------
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS {t} (key BLOB NOT NULL, value BLOB, parent_id BIGINT, "
    "id INTEGER PRIMARY KEY, sequence BIGINT, CONSTRAINT {t}_parent FOREIGN KEY (parent_id) "
    "REFERENCES {t} (id) ON UPDATE NO ACTION ON DELETE CASCADE)",
    "CREATE INDEX IF NOT EXISTS {t}_p ON {t} (parent_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS {t}_up ON {t} (parent_id, key) WHERE parent_id IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS {t}_unp ON {t} (key) WHERE parent_id IS NULL",
]


class Kv:
    def __init__(self, conn):
        self.conn = conn

    def bucket(self, parent, key: bytes, sequence=None) -> int:
        assert isinstance(key, bytes) and key
        cur = self.conn.execute(
            "INSERT INTO %s (key, value, parent_id, sequence) VALUES (?, NULL, ?, ?)" % KV_TABLE,
            (key, parent, sequence))
        return cur.lastrowid

    def put(self, parent: int, key: bytes, value: bytes):
        assert isinstance(key, bytes) and key and isinstance(value, bytes)
        self.conn.execute(
            "INSERT INTO %s (key, value, parent_id) VALUES (?, ?, ?) "
            "ON CONFLICT (parent_id, key) WHERE parent_id IS NOT NULL "
            "DO UPDATE SET value = excluded.value" % KV_TABLE,
            (key, value, parent))

    def delete(self, parent: int, key: bytes):
        cur = self.conn.execute(
            "DELETE FROM %s WHERE parent_id = ? AND key = ? AND value IS NOT NULL" % KV_TABLE,
            (parent, key))
        assert cur.rowcount == 1

    def set_sequence(self, bucket_id: int, seq: int):
        self.conn.execute("UPDATE %s SET sequence = ? WHERE id = ?" % KV_TABLE, (seq, bucket_id))


def write_unrelated_before(kv: Kv, bld: Builder):
    rng = bld.rng
    meta = kv.bucket(None, b"metadata")
    kv.put(meta, b"dbp", u32(31))                       # db version
    kv.put(meta, b"mig", b"")                           # empty value (not NULL)
    kv.put(meta, b"\x00\x00\x00\x01", rng.bytes(20))     # a 4-byte key, like an invoice key

    oc = kv.bucket(None, b"open-chan-bucket")
    node = kv.bucket(oc, b"\x02" + rng.bytes(32))
    chain = kv.bucket(node, bytes.fromhex(
        "6fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000"))
    chan = kv.bucket(chain, rng.bytes(32) + u32(1), sequence=5)
    kv.put(chan, b"chan-info-key", rng.bytes(180))
    kv.put(chan, b"\x00\x00\x00\x00", rng.bytes(36))
    kv.put(chan, b"revocation-state-key", rng.bytes(96))
    kv.put(chan, b"empty-value", b"")
    kv.put(oc, b"\xff" * 8, b"\x00\x01binary\xff")
    return meta, oc


def write_unrelated_after(kv: Kv, bld: Builder, oc: int):
    rng = bld.rng
    kv.bucket(None, b"closed-chan-bucket")              # an empty bucket
    node2 = kv.bucket(oc, b"\x03" + rng.bytes(32))
    kv.put(node2, b"\x00", rng.bytes(8))


def write_store(path: Path, invoices, settle_entries, last_settle):
    bld_rng = Builder()  # separate deterministic stream for unrelated data
    bld_rng.rng = Drbg(SEED + b"/unrelated")
    if path.exists():
        path.unlink()
    for suffix in ("-journal", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.unlink()
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN")
        for stmt in SCHEMA:
            conn.execute(stmt.format(t=KV_TABLE))
        kv = Kv(conn)

        _, oc = write_unrelated_before(kv, bld_rng)

        invb = kv.bucket(None, b"invoices")
        hashes = kv.bucket(invb, b"paymenthashes")
        addidx = kv.bucket(invb, b"invoice-add-index")
        settleidx = kv.bucket(invb, b"invoice-settle-index")
        payaddr = kv.bucket(None, b"pay-addr-index")
        setids = kv.bucket(None, b"set-id-index")

        # Add every invoice in order, as lnd's AddInvoice would (the final
        # serialized value is written directly).
        kv.put(hashes, b"nik", u32(0))
        for inv in invoices:
            key = u32(inv.num)
            kv.put(hashes, b"nik", u32(inv.num + 1))
            kv.put(hashes, inv.payment_hash, key)
            if any(inv.payment_addr):
                kv.put(payaddr, inv.payment_addr, key)
            kv.put(addidx, u64(inv.add_index), key)
            kv.set_sequence(addidx, inv.add_index)
            kv.put(invb, key, inv.value_bytes())

        # Per-set HTLC records and set-id index of AMP invoices, written after
        # the invoices (row ids then do not follow key order).
        for inv in invoices:
            if inv.is_amp():
                sids = ([s.set_id for s in inv.amp_sets] if inv.amp_sets is not None
                        else list(dict.fromkeys(h.amp["set_id"] for h in inv.htlcs)))
                for sid in sids:
                    kv.put(setids, sid, u32(inv.num))
            for s in inv.amp_sets or []:
                if s.htlcs:
                    kv.put(invb, u32(inv.num) + s.set_id, htlc_records(s.htlcs))

        # Settle index entries in settle order.
        for idx, value, _ in settle_entries:
            kv.put(settleidx, u64(idx), value)
        kv.set_sequence(settleidx, last_settle)

        write_unrelated_after(kv, bld_rng, oc)

        # Delete invoices 7 and 8 the way lnd's DeleteInvoice does.
        for inv in invoices:
            if not inv.deleted:
                continue
            key = u32(inv.num)
            kv.delete(hashes, inv.payment_hash)
            if any(inv.payment_addr):
                kv.delete(payaddr, inv.payment_addr)
            kv.delete(addidx, u64(inv.add_index))
            for idx, _, num in settle_entries:
                if num == inv.num:
                    kv.delete(settleidx, u64(idx))
            kv.delete(invb, key)
        conn.execute("COMMIT")
    finally:
        conn.close()


def unrelated_rows(path: Path, top_keys):
    """Every row under the unrelated top-level buckets, with its key path."""
    conn = sqlite3.connect(str(path))
    try:
        rows = []

        def walk(parent_id, path_keys):
            for key, value, rid, seq in conn.execute(
                    "SELECT key, value, id, sequence FROM %s WHERE parent_id = ? ORDER BY key"
                    % KV_TABLE, (parent_id,)):
                rows.append({"path": [k.hex() for k in path_keys], "key": key.hex(),
                             "value": None if value is None else value.hex(), "sequence": seq})
                if value is None:
                    walk(rid, path_keys + [key])

        for top in top_keys:
            (rid, value, seq), = conn.execute(
                "SELECT id, value, sequence FROM %s WHERE parent_id IS NULL AND key = ?"
                % KV_TABLE, (top,)).fetchall()
            rows.append({"path": [], "key": top.hex(), "value": None if value is None else value.hex(),
                         "sequence": seq})
            walk(rid, [top])
        # Sanity: every key and value is stored as a BLOB.
        bad = conn.execute(
            "SELECT count(*) FROM %s WHERE typeof(key) != 'blob' OR "
            "(value IS NOT NULL AND typeof(value) != 'blob')" % KV_TABLE).fetchone()[0]
        assert bad == 0
        return rows
    finally:
        conn.close()


def build_expected(invoices, last_settle, untouched, unrelated_tops):
    live = [i for i in invoices if not i.deleted]
    per_inv = [i.expected() for i in live]
    highest = max([last_settle]
                  + [i.settle_index for i in live]
                  + [s.settle_index for i in live for s in (i.amp_sets or [])])
    counts = {
        "invoices": len(per_inv),
        "invoice_features": sum(len(e["features"]) for e in per_inv),
        "invoice_htlcs": sum(len(e["htlcs"]) for e in per_inv),
        "invoice_htlc_custom_records": sum(len(h["custom_records"]) for e in per_inv
                                           for h in e["htlcs"]),
        "amp_sub_invoices": sum(len(e["amp_sub_invoices"]) for e in per_inv),
        "amp_sub_invoice_htlcs": sum(len(e["amp_sub_invoice_htlcs"]) for e in per_inv),
    }
    return {
        "format": "oneway-independent-expected/1",
        "generator": "tests/independent/make_lnd_store.py",
        "store": STORE_NAME,
        "kv_table": KV_TABLE,
        "conventions": {
            "bytes": "lowercase hex (BLOB columns, and TEXT columns memo/payment_request: compare CAST(col AS BLOB))",
            "null": "JSON null is SQL NULL",
            "bool": "JSON true/false; SQLite stores 1/0",
            "timestamps": "TEXT, Go layout '2006-01-02 15:04:05.999999999-07:00' of the UTC instant",
            "chan_id": "decimal TEXT of the u64 short channel id",
            "invoice_id": "each invoice's rows belong to invoices.id = invoice.id (the add index)",
        },
        "invoices": per_inv,
        "invoice_sequences": {"settle_index": highest},
        "counts": counts,
        "unrelated_buckets": [k.hex() for k in unrelated_tops],
        "untouched_rows": untouched,
    }


def main(argv=None):
    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=repo / "fixtures" / "independent",
                    help="directory for %s and %s (default: fixtures/independent)"
                    % (STORE_NAME, EXPECTED_NAME))
    args = ap.parse_args(argv)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    bld = Builder()
    invoices = build_invoices(bld)
    settle_entries, last_settle = assign_settle_indexes(invoices)

    store = out / STORE_NAME
    write_store(store, invoices, settle_entries, last_settle)

    tops = [b"metadata", b"open-chan-bucket", b"closed-chan-bucket"]
    untouched = unrelated_rows(store, tops)
    expected = build_expected(invoices, last_settle, untouched, tops)
    text = json.dumps(expected, indent=1, ensure_ascii=True) + "\n"
    (out / EXPECTED_NAME).write_bytes(text.encode("ascii"))

    c = expected["counts"]
    print("wrote %s (%d invoices, %d htlcs, %d custom records, %d AMP sets) and %s"
          % (store, c["invoices"], c["invoice_htlcs"], c["invoice_htlc_custom_records"],
             c["amp_sub_invoices"], out / EXPECTED_NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
