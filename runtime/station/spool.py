"""A disk spool of outgoing messages: append-only, fsynced, in order, bounded, surviving restarts.

The MQTT publisher writes every result here before it goes to the broker and removes it only
when the broker has acknowledged it (PUBACK), so results produced while the broker is down (or
while the station restarts) are delivered later, in order. The spool knows nothing of MQTT.

On disk, in the spool folder:
- ``seg-<first seq, 12 digits>.jsonl``: segments of records, one JSON line each,
  ``{"seq": 17, "job_id": "...", "topic": "...", "payload": {...}}``, appended and fsynced
  (one fsync per batch: ``append_many``); ``seq`` counts up from 1 over the spool's life, across
  restarts. Each start writes a new segment (a line torn by a crash stays behind in an old one
  and is skipped, counted); a segment rolls over after ``segment_records`` records.
- ``acked``: ``{"acked_through": N, "next_seq": M}``, replaced atomically: every record with
  ``seq <= N`` is done (acknowledged by the broker, or dropped by the bound). It is written
  lazily (``sync``), so a crash may resend a few acknowledged records (at least once, never less).
A segment is deleted once all its records are done and ``keep_delivered`` newer done records
follow it: that history lets a reconciliation re-send a result the broker acknowledged and then
lost (a broker killed before it stored the message; see ``find``).

The bound covers the pending (not yet done) records: at most ``max_records`` of them and at most
``max_bytes`` of their lines. Beyond it the oldest pending records that have not been handed to
the network yet are dropped; ``append`` returns them so that the caller counts and reports them.
When a write fails (a full disk), the record stays pending in memory only (``durable`` False) so
it is still delivered while the process lives; the caller reports the failure.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

SEGMENT_GLOB = "seg-*.jsonl"
ACKED_FILE = "acked"


@dataclass(frozen=True)
class SpoolRecord:
    """One message: ``seq`` (its place in the spool), ``job_id`` (the result it carries),
    ``topic``, ``payload`` (the JSON text sent, UTF-8), ``size`` (bytes of its spool line)."""

    seq: int
    job_id: str
    topic: str
    payload: bytes
    size: int


@dataclass(frozen=True)
class Appended:
    """What ``Spool.append`` did: the new ``record``; ``dropped``: older pending records it pushed
    out of the bound (oldest first); ``error``: why the record is not on disk (None when it is)."""

    record: SpoolRecord
    dropped: list[SpoolRecord]
    error: str | None = None

    @property
    def durable(self) -> bool:
        return self.error is None


@dataclass
class _Segment:
    path: Path
    first_seq: int
    last_seq: int = 0


def _line(record: SpoolRecord) -> bytes:
    obj = {"seq": record.seq, "job_id": record.job_id, "topic": record.topic, "payload": json.loads(record.payload)}
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def payload_bytes(obj: object) -> bytes:
    """The one JSON text of a payload (compact), the same when written and when read back."""
    return json.dumps(obj, separators=(",", ":")).encode()


class Spool:
    """The spool in ``folder`` (created if missing); see the module docstring. Thread-safe: the
    station's thread appends while the network side takes and acknowledges.

    ``max_records`` / ``max_bytes``: the bound on pending records; ``keep_delivered``: done records
    kept on disk for ``find``; ``fsync``: flush each append to the device (off only for tests
    of throughput on slow disks); ``segment_records``: records per segment file."""

    def __init__(
        self,
        folder: Path,
        *,
        max_records: int = 100_000,
        max_bytes: int = 64 << 20,
        keep_delivered: int = 10_000,
        fsync: bool = True,
        segment_records: int = 1000,
    ) -> None:
        if max_records < 1 or max_bytes < 1 or keep_delivered < 0 or segment_records < 1:
            raise ValueError("spool bounds must be positive")
        self.folder = folder
        self.max_records, self.max_bytes = max_records, max_bytes
        self.keep_delivered, self.fsync, self.segment_records = keep_delivered, fsync, segment_records
        self._lock = Lock()
        self._pending: OrderedDict[int, SpoolRecord] = OrderedDict()  # not done, in seq order
        self._handed: set[int] = set()  # pending records given to the network (not droppable)
        self._pending_bytes = 0
        self.torn_lines = 0  # unreadable lines found at open (a crash mid-write)
        folder.mkdir(parents=True, exist_ok=True)
        acked_through, self._next_seq = self._read_acked()
        self._segments: list[_Segment] = []
        self._load(acked_through)
        self._fd: int | None = None
        self._written_through = acked_through  # the pointer as last written to disk

    # -- opening -------------------------------------------------------------------------

    def _read_acked(self) -> tuple[int, int]:
        try:
            state = json.loads((self.folder / ACKED_FILE).read_text())
            return int(state["acked_through"]), int(state["next_seq"])
        except FileNotFoundError:
            return 0, 1
        except (ValueError, KeyError, TypeError):  # a damaged pointer: resend everything kept (at least once)
            return 0, 1

    def _load(self, acked_through: int) -> None:
        """Index the segments; every record above the acked pointer becomes pending again."""
        for path in sorted(self.folder.glob(SEGMENT_GLOB)):
            try:
                first = int(path.stem.removeprefix("seg-"))
            except ValueError:
                continue
            segment = _Segment(path, first, first - 1)
            for record in self._read_segment(path, count_torn=True):
                segment.last_seq = max(segment.last_seq, record.seq)
                self._next_seq = max(self._next_seq, record.seq + 1)
                if record.seq > acked_through and record.seq not in self._pending:
                    self._pending[record.seq] = record
                    self._pending_bytes += record.size
            self._segments.append(segment)
        self._pending = OrderedDict(sorted(self._pending.items()))

    def _read_segment(self, path: Path, count_torn: bool = False) -> Iterable[SpoolRecord]:
        with path.open("rb") as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                    payload = payload_bytes(obj["payload"])
                    yield SpoolRecord(int(obj["seq"]), str(obj["job_id"]), str(obj["topic"]), payload, len(raw))
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += count_torn

    # -- the station's side --------------------------------------------------------------

    def append(self, job_id: str, topic: str, payload: bytes) -> Appended:
        """Write one record (fsynced) and make it pending; apply the bound (see ``Appended``)."""
        return self.append_many([(job_id, topic, payload)])[0]

    def append_many(self, items: list[tuple[str, str, bytes]]) -> list[Appended]:
        """Write records (job id, topic, payload) in order with one fsync for all of them (a
        group commit), make them pending and apply the bound; one ``Appended`` per record."""
        with self._lock:
            written: list[tuple[SpoolRecord, str | None, list[SpoolRecord]]] = []
            for job_id, topic, payload in items:
                seq = self._next_seq
                self._next_seq += 1
                line = _line(SpoolRecord(seq, job_id, topic, payload, 0))
                record = SpoolRecord(seq, job_id, topic, payload, len(line))
                error = self._write(record, line)
                self._pending[seq] = record
                self._pending_bytes += record.size
                written.append((record, error, self._apply_bound()))
            sync_error = self._flush() if any(error is None for _, error, _ in written) else None
            return [Appended(record, dropped, error or sync_error) for record, error, dropped in written]

    def _write(self, record: SpoolRecord, line: bytes) -> str | None:
        """Append ``line`` to the current segment (a new one at start and at roll-over)."""
        try:
            segment = self._segments[-1] if self._fd is not None else None
            if segment is None or segment.last_seq - segment.first_seq + 1 >= self.segment_records:
                segment = self._open_segment(record.seq)
            assert self._fd is not None
            size = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                os.write(self._fd, line)
            except OSError:
                try:  # keep the segment whole: cut back a partial line
                    os.ftruncate(self._fd, size)
                except OSError:
                    pass
                raise
            segment.last_seq = record.seq
            return None
        except OSError as err:
            return self._why(err)

    def _flush(self) -> str | None:
        if not self.fsync or self._fd is None:
            return None
        try:
            os.fdatasync(self._fd)
            return None
        except OSError as err:
            return self._why(err)

    def _why(self, err: OSError) -> str:
        return f"{err.strerror or err} ({self.folder})"

    def _open_segment(self, first_seq: int) -> _Segment:
        if self._fd is not None:
            try:
                if self.fsync:  # the closing segment's last lines belong to the batch being committed
                    os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
        path = self.folder / f"seg-{first_seq:012d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        segment = _Segment(path, first_seq, first_seq - 1)
        self._segments.append(segment)
        if self.fsync:  # the new file's directory entry must survive a power cut too
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return segment

    def _apply_bound(self) -> list[SpoolRecord]:
        dropped: list[SpoolRecord] = []
        if len(self._pending) <= self.max_records and self._pending_bytes <= self.max_bytes:
            return dropped
        for seq in list(self._pending):
            if len(self._pending) <= self.max_records and self._pending_bytes <= self.max_bytes:
                break
            if seq in self._handed or len(self._pending) == 1:  # never the newest: it was just written
                continue
            dropped.append(self._finish(seq))
        return dropped

    # -- the network's side --------------------------------------------------------------

    def take_next(self) -> SpoolRecord | None:
        """The oldest pending record not yet handed to the network, now marked handed."""
        with self._lock:
            for seq, record in self._pending.items():
                if seq not in self._handed:
                    self._handed.add(seq)
                    return record
            return None

    def ack(self, seq: int) -> SpoolRecord | None:
        """The broker has the record ``seq``: it is done (None when it was not pending)."""
        with self._lock:
            return self._finish(seq) if seq in self._pending else None

    def unhand_all(self) -> None:
        """Forget which records were handed (the network side lost them): all pending are sent again."""
        with self._lock:
            self._handed.clear()

    def _finish(self, seq: int) -> SpoolRecord:
        record = self._pending.pop(seq)
        self._handed.discard(seq)
        self._pending_bytes -= record.size
        return record

    # -- state ---------------------------------------------------------------------------

    def _through(self) -> int:
        """Every record at or below this seq is done: the ones below the oldest pending."""
        return next(iter(self._pending)) - 1 if self._pending else self._next_seq - 1

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def handed_count(self) -> int:
        return len(self._handed)

    def sync(self) -> None:
        """Write the acked pointer (atomically) and delete segments no longer needed."""
        with self._lock:
            through, next_seq = self._through(), self._next_seq
            if through == self._written_through:
                return
            tmp = self.folder / (ACKED_FILE + ".tmp")
            tmp.write_text(json.dumps({"acked_through": through, "next_seq": next_seq}))
            os.replace(tmp, self.folder / ACKED_FILE)
            self._written_through = through
            keep_from = through - self.keep_delivered  # done records at or below this may go
            current = self._segments[-1] if self._fd is not None else None
            for segment in list(self._segments):
                if segment is not current and segment.last_seq <= keep_from:
                    segment.path.unlink(missing_ok=True)
                    self._segments.remove(segment)

    def find(self, job_ids: Iterable[str]) -> list[SpoolRecord]:
        """The done records still on disk that carry these job ids (the first of each, in seq
        order): what a reconciliation re-sends when a subscriber's log lacks them."""
        wanted = set(job_ids)
        found: dict[str, SpoolRecord] = {}
        with self._lock:
            paths = [s.path for s in self._segments]
            through = self._through()
        for path in paths:
            try:
                records = list(self._read_segment(path))
            except FileNotFoundError:
                continue
            for record in records:
                if record.job_id in wanted and record.job_id not in found and record.seq <= through:
                    found[record.job_id] = record
        return sorted(found.values(), key=lambda r: r.seq)

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
