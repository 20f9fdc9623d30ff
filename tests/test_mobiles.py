import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.chunks import (
    chunk_count,
    chunked,
    is_linkid,
    linkid_bytes,
    linkid_from_bytes,
    linkid_owner,
    new_linkid,
)
from workers.mobiles import normalise, normalise_all
from workers.storage.schema import new_message_id


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "+8613800138000",
        "8613800138000",
        "008613800138000",
        "138 0013 8000",
        "+86 138-0013-8000",
        "(138)00138000",
    ],
)
def test_accepted_forms(raw):
    assert normalise(raw) == "13800138000"


@pytest.mark.parametrize(
    "raw",
    [
        "12800138000",
        "1380013800",
        "138001380001",
        "02188888888",
        "abc",
        "",
        "+1 13800138000",
        "+8612800138000",
        "1380013800x",
    ],
)
def test_not_mainland_mobiles(raw):
    assert normalise(raw) is None


def test_dedupe_keeps_first_and_order_and_reports_invalid_as_given():
    r = normalise_all(["13900000001", "bad", "+86 13800000002", "13900000001", "8613800000002"])
    assert r.valid == ["13900000001", "13800000002"]
    assert r.positions == [0, 2]
    assert r.invalid == [(1, "bad")]
    assert r.duplicates == 2


mobile = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
decorated = st.builds(lambda p, m: p + m, st.sampled_from(["", "+86", "86", "0086", "+86 "]), mobile)


@given(st.lists(st.one_of(decorated, st.text(max_size=14)), max_size=300), st.integers(1, 1000))
def test_normalise_dedupe_chunk_loses_nothing_duplicates_nothing(raw, size):
    r = normalise_all(raw)
    expected = list(dict.fromkeys(m for m in map(normalise, raw) if m is not None))
    assert r.valid == expected
    chunks = chunked(r.valid, size)
    assert [m for c in chunks for m in c] == expected
    assert all(0 < len(c) <= min(size, 1000) for c in chunks)
    assert len(chunks) == chunk_count(len(expected), size)
    assert len(r.valid) + len(r.invalid) + r.duplicates == len(raw)


def test_chunks_never_exceed_provider_limit():
    assert [len(c) for c in chunked(list(range(2500)), 5000)] == [1000, 1000, 500]


def test_a_million_linkids_are_unique_and_well_formed_and_name_their_message():
    owners = [new_message_id() for _ in range(10)]
    ids = {new_linkid(owners[i % 10]) for i in range(1_000_000)}
    assert len(ids) == 1_000_000
    assert all(is_linkid(i) and len(i) == 32 for i in ids)
    assert {linkid_owner(i) for i in ids} == set(owners)
    assert linkid_owner(new_linkid("b" + owners[0])) == owners[0]  # a batch's: its id without the b
    assert is_linkid(new_linkid("m1")) and len(new_linkid("m1")) == 32  # an owner that is no id: all random
    assert linkid_owner("0123456789abcdef0123456789abcdef") == "" and linkid_owner("abc") == ""
    for linkid in [*list(ids)[:1000], "0123456789abcdef0123456789abcdef", "Z" * 32, "a" * 32]:
        assert linkid_from_bytes(linkid_bytes(linkid)) == linkid  # a folded record's 24 bytes
