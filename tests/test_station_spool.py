"""The station's disk spool on its own (no broker): order, acknowledgement, the bound, restarts,
a line torn by a crash, a full device, and the delivered history kept for reconciliation."""

from __future__ import annotations

import json

from clipad.runtime.station.spool import Spool, payload_bytes


def put(spool: Spool, i: int) -> None:
    spool.append(f"j{i}", "clipad/st/washer/result", payload_bytes({"job_id": f"j{i}", "n": i}))


def drain(spool: Spool) -> list[str]:
    out = []
    while (record := spool.take_next()) is not None:
        out.append(record.job_id)
        spool.ack(record.seq)
    return out


def test_records_come_out_in_order_and_leave_only_when_acknowledged(tmp_path):
    spool = Spool(tmp_path)
    for i in range(5):
        put(spool, i)
    first, second = spool.take_next(), spool.take_next()
    assert first is not None and second is not None and (first.seq, second.seq) == (1, 2)
    assert json.loads(first.payload) == {"job_id": "j0", "n": 0}
    spool.ack(second.seq)  # out of order: the pointer stays below the unacknowledged first
    spool.sync()
    assert not (tmp_path / "acked").exists()  # nothing done below the oldest pending: nothing to write
    assert spool.pending_count == 4 and spool.handed_count == 1
    spool.ack(first.seq)
    assert drain(spool) == ["j2", "j3", "j4"]
    spool.close()
    assert json.loads((tmp_path / "acked").read_text()) == {"acked_through": 5, "next_seq": 6}


def test_a_restart_resends_the_unacknowledged_and_skips_a_torn_line(tmp_path):
    spool = Spool(tmp_path)
    for i in range(4):
        put(spool, i)
    record = spool.take_next()
    assert record is not None
    spool.ack(record.seq)
    spool.close()
    segment = next(tmp_path.glob("seg-*.jsonl"))
    with segment.open("ab") as f:
        f.write(b'{"seq": 5, "job_id": "j4", "top')  # a crash mid-write
    again = Spool(tmp_path)
    assert again.torn_lines == 1
    assert drain(again) == ["j1", "j2", "j3"]
    put(again, 9)  # numbering continues after the old records; a new segment holds it
    assert [r.seq for r in [again.take_next()] if r] == [5]
    assert len(list(tmp_path.glob("seg-*.jsonl"))) == 2
    again.close()


def test_the_bound_drops_the_oldest_not_yet_handed(tmp_path):
    spool = Spool(tmp_path, max_records=3)
    put(spool, 0)
    assert spool.take_next() is not None  # j0 is on the wire: it cannot be recalled
    dropped = []
    for i in range(1, 6):
        appended = spool.append(f"j{i}", "t", payload_bytes({"n": i}))
        dropped += [r.job_id for r in appended.dropped]
    assert dropped == ["j1", "j2", "j3"] and spool.pending_count == 3
    spool.ack(1)
    assert drain(spool) == ["j4", "j5"]
    small = Spool(tmp_path / "bytes", max_bytes=300)
    for i in range(10):
        put(small, i)
    assert 0 < small.pending_bytes <= 300 and drain(small)[-1] == "j9"


def test_a_full_device_keeps_the_record_in_memory_and_says_why(tmp_path):
    spool = Spool(tmp_path, segment_records=1)
    put(spool, 0)
    (tmp_path / "seg-000000000002.jsonl").symlink_to("/dev/full")
    appended = spool.append("j1", "t", payload_bytes({"n": 1}))
    assert not appended.durable and "No space left on device" in (appended.error or "")
    assert drain(spool) == ["j0", "j1"]


def test_delivered_history_is_kept_for_reconciliation_then_pruned(tmp_path):
    spool = Spool(tmp_path, keep_delivered=4, segment_records=3)
    for i in range(10):
        put(spool, i)
    assert spool.find(["j1"]) == []  # still pending: it will be delivered anyway
    drain(spool)
    spool.sync()
    assert [r.job_id for r in spool.find(["j8", "j6", "nope"])] == ["j6", "j8"]
    # done through 10, keep 4: segments ending at or below seq 6 go (records 1-3 and 4-6)
    assert sorted(p.name for p in tmp_path.glob("seg-*.jsonl")) == ["seg-000000000007.jsonl", "seg-000000000010.jsonl"]
    assert spool.find(["j0"]) == []
