"""Every packed value format round-trips (hypothesis), and Lua and Python write the same form."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from workers import chunks, coalesce
from workers.storage import schema, scripts
from workers.storage.codecs import ReportValue
from workers.storage.schema import Folded, Message, ReportState
from workers.text import ddt_group, mobile_of, parse_ddt_params

mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
codes = st.text(max_size=20)  # an operator's code is theirs: anything, '|' included
times = st.integers(min_value=0, max_value=2**40).map(str)
values = st.text(alphabet=st.characters(blacklist_characters=",;"), max_size=30)
mids = st.builds(lambda: schema.new_message_id())


@given(st.sampled_from(ReportState), codes, times)
def test_a_report_value_round_trips(state, code, at):
    value = ReportValue(state, code, at)
    assert ReportValue.decode(value.encode()) == value
    assert ReportValue.decode(value.encode().encode()) == value


def test_the_report_lua_writes_is_the_one_python_reads(redis_conn):
    redis_conn.hset("m", "st", "sending")
    args = {"pairs": ["r", "m"], "ttl": 100, "owner": "st", "reports": ["1", "U", "MK|01", "77", 0]}
    marks = {"unknown": ReportState.UNKNOWN, "delivered": ReportState.DELIVERED}
    scripts.MERGE_REPORTS(redis_conn, **args, **marks)
    assert ReportValue.decode(redis_conn.hget("r", "1")) == ReportValue(ReportState.UNDELIVERED, "MK|01", "77")


@given(mobiles, st.lists(values, min_size=1, max_size=5))
def test_a_ddt_group_round_trips_and_names_its_mobile(mobile, group_values):
    item = ddt_group(mobile, group_values)
    assert mobile_of(item) == mobile and mobile_of(mobile) == mobile
    assert parse_ddt_params(item) == [[mobile, *group_values]]


@given(mids, st.one_of(mobiles, st.builds(ddt_group, mobiles, st.lists(values, min_size=1, max_size=3))))
def test_a_pool_entry_round_trips(mid, item):
    assert coalesce.parse_entry(coalesce.entry(mid, item)) == (mid, item)


@given(mids, st.integers(min_value=0, max_value=10**6))
def test_a_watch_ref_round_trips(mid, n):
    assert schema.parse_ref(schema.chunk_ref(mid, n)) == ("c", mid, n)
    assert schema.parse_ref(schema.message_ref(mid)) == ("m", mid, -1)


@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=32, max_size=32))
def test_a_linkid_round_trips_through_its_bytes(linkid):
    assert chunks.linkid_from_bytes(chunks.linkid_bytes(linkid)) == linkid


@given(
    mid=mids,
    mobile=mobiles,
    text=st.text(max_size=40),
    reference=st.text(max_size=20),
    priority=st.sampled_from(["high", "normal", "bulk"]),
    report=st.sampled_from(ReportState),
    code=st.text(max_size=10),
    sent=st.integers(min_value=0, max_value=10**6),
    after=st.integers(min_value=0, max_value=10**6),
)
def test_a_folded_message_round_trips(mid, mobile, text, reference, priority, report, code, sent, after):
    created = schema.time_of(mid)
    msg = Message(
        id=mid,
        state="sending",
        account="default",
        priority=priority,
        kind="t",
        text=text,
        items=mobile,
        recipients=1,
        parts=1,
        api_key="tester",
        reference=reference,
        created=created,
        chunks=1,
    )
    # What reports give: delivered is always DELIVRD, unknown has no code, undelivered any code.
    code = {ReportState.DELIVERED: "DELIVRD", ReportState.UNKNOWN: ""}.get(report, code)
    submitted = float(int(created) + sent)
    folded = Folded("0123456789abcdef0123456789abcdef", submitted, report, code, submitted + after)
    back = Message.unfold(mid, msg.fold(folded))
    assert (back.text, back.reference, back.items, back.priority, back.api_key) == (
        text,
        reference,
        mobile,
        priority,
        "tester",
    )
    assert back.folded is not None and back.folded.report == report and back.folded.reported == submitted + after
    assert back.folded.code == code
