"""Where each stream may resume after a crash: only after what has been stored.

A resume point is only as good as the commit it travels with (Kafka Connect's
exactly-once sources write source offsets in the records' transaction). This module
is the bookkeeping behind that, in plain Python (no Scrapy, no I/O):

* Every event handed to the spider opens a :class:`Slot` in its stream's
  :class:`Track` (a batch of events opens one slot for all of them). The slot counts
  what still depends on it: the event itself until the spider has finished with it,
  each item made from it until it leaves the item pipelines, and each row a sink
  holds for it until the sink has committed that row.
* The slot in the making is the :data:`CURRENT` context variable. An item's
  processing runs in a copy of the context it was made in, so a pipeline learns where
  an item came from with :func:`hold` / :data:`CURRENT`, with no field on the item:
  user dicts, ``SSEEventItem`` and ``SSEBatch`` alike.
* A track's resume point (:attr:`Track.resume_id`) advances over slots in order, and
  only over slots whose count is zero: everything made from the events up to it has
  been stored, recorded as a dead letter or dropped on purpose.
* A sink that commits rows computes, before its transaction, the resume point that
  will hold once the transaction commits (:meth:`Track.resume_after`), and writes it
  in that same transaction with the position of its last row (a :class:`Cursor`). On
  the next start the crawl resumes each stream from the most advanced cursor among
  its stores, and each store skips the rows it already holds (:meth:`Cursor.holds`).

Positions: each event gets a sequence number (``seq``) that continues across
restarts (a resumed track starts after the cursor's ``seq``), and each item made from
an event an ordinal at the store that writes it, so a store knows which replayed rows
it holds even when a crash fell between two rows of one event.
"""

from __future__ import annotations

from collections import deque
from contextvars import ContextVar
from typing import NamedTuple

__all__ = [
    "CURRENT",
    "Cursor",
    "Hold",
    "Ledger",
    "Mark",
    "Slot",
    "Track",
    "hold",
    "release",
]


class Slot:
    """One delivery to the spider (an event, or a batch of events ``first..last``)
    and how many things still depend on it (``pending``)."""

    __slots__ = ("event_id", "first", "first_id", "last", "pending", "track")

    def __init__(self, track: Track, first: int, last: int, event_id: str, first_id: str) -> None:
        self.track = track
        self.first = first
        self.last = last
        self.event_id = event_id
        self.first_id = first_id
        #: The delivery itself (until the spider is done with it), items in the item
        #: pipelines, rows held by sinks.
        self.pending = 1

    def __repr__(self) -> str:
        return f"<Slot {self.track.key} {self.first}..{self.last} pending={self.pending}>"


#: The slot whose event the spider is reading, in the task that reads it (and in the
#: tasks it starts: item processing). ``None`` outside stream output.
CURRENT: ContextVar[Slot | None] = ContextVar("scrapy_sse_slot", default=None)


class Mark(NamedTuple):
    """A row's position in its stream: the event's ``seq`` and the row's ordinal
    among the rows one store writes for that event."""

    seq: int
    item: int


class Cursor(NamedTuple):
    """What a store keeps per stream, in the transaction of its rows: where the crawl
    may resume (after ``event_id``, whose sequence number is ``seq``), the position of
    the last row it holds (``stored``), and the id of the first event after the resume
    point (``next_id``): a replay that starts with another event is not the same
    stream (a server that ignored ``Last-Event-ID``), and no row of it is skipped."""

    event_id: str
    seq: int
    stored: Mark
    next_id: str = ""

    def holds(self, mark: Mark) -> bool:
        """Whether the store that wrote this cursor already holds the row at ``mark``."""
        return mark <= self.stored

    def as_list(self) -> list[str | int]:
        """The cursor as JSON-ready values (spill files, ``cursors.json``, footers)."""
        return [self.event_id, self.seq, self.stored.seq, self.stored.item, self.next_id]

    @classmethod
    def from_list(cls, values: list[str | int]) -> Cursor:
        event_id, seq, stored_seq, stored_item, *rest = values
        next_id = str(rest[0]) if rest else ""
        return cls(str(event_id), int(seq), Mark(int(stored_seq), int(stored_item)), next_id)


class Track:
    """One stream (by its stream key, across reconnects): its slots in order and its
    resume point."""

    __slots__ = ("aligned", "expect", "fence", "key", "resume_id", "resume_seq", "seq", "slots")

    def __init__(self, key: str, resume_id: str = "", resume_seq: int = 0) -> None:
        self.key = key
        #: The resume point: every slot up to this event has settled.
        self.resume_id = resume_id
        self.resume_seq = resume_seq
        #: The last sequence number given to an event.
        self.seq = resume_seq
        self.slots: deque[Slot] = deque()
        #: The id the first event must have for the replay to be the stream a store's
        #: positions describe (``None``: nothing to check), and whether it had.
        self.expect: str | None = None
        self.aligned = False
        #: In a cluster: the fencing token of the lease under which this track's
        #: events are read (``None`` outside a cluster). Rows of a track whose token is
        #: no longer the worker's for the stream are never written.
        self.fence: int | None = None

    def open(self, event_id: str, count: int = 1, first_id: str | None = None) -> Slot:
        """A slot for the next ``count`` events (the last one's id is ``event_id``, the
        first one's ``first_id``), held until :meth:`settle` is called for it."""
        first = self.seq + 1
        self.seq += count
        if first_id is None:
            first_id = event_id
        if self.expect is not None:
            self.aligned = first_id == self.expect
            self.expect = None
        slot = Slot(self, first, self.seq, event_id, first_id)
        self.slots.append(slot)
        return slot

    def settle(self, slot: Slot, count: int = 1) -> None:
        """``count`` things that depended on ``slot`` no longer do."""
        slot.pending -= count
        if slot.pending <= 0 and self.slots and self.slots[0] is slot:
            self.advance()

    def advance(self) -> None:
        """Move the resume point over the settled slots at the front."""
        slots = self.slots
        while slots and slots[0].pending <= 0:
            slot = slots.popleft()
            self.resume_id = slot.event_id
            self.resume_seq = slot.last

    def resume_after(self, settling: dict[Slot, int]) -> tuple[str, int, str]:
        """The resume point once the counts in ``settling`` (slot -> count) are
        settled too, and the id of the first event after it (``""``: none pending):
        what a sink writes in the transaction that settles them."""
        event_id, seq = self.resume_id, self.resume_seq
        for slot in self.slots:
            if slot.pending - settling.get(slot, 0) > 0:
                return event_id, seq, slot.first_id
            event_id, seq = slot.event_id, slot.last
        return event_id, seq, ""


class Ledger:
    """The tracks of one crawl, and the cursors its stores hold (loaded at start)."""

    def __init__(self) -> None:
        self.tracks: dict[str, Track] = {}
        #: Per stream key, the most advanced cursor any store of the crawl holds.
        self.stored: dict[str, Cursor] = {}
        #: Per stream key, a resume point kept outside the stores (``JOBDIR``).
        self.fallback: dict[str, tuple[str, int]] = {}
        #: In a cluster: per stream key, the token of this worker's lease on it, given
        #: to the stream's next track.
        self.fences: dict[str, int] = {}
        #: Item id -> slot, for a crawl whose items are not processed in the context
        #: they were made in, until the first item pipeline puts it in the context
        #: (see scrapy_sse.provenance); ``None``: the context carries it throughout.
        self.by_item: dict[int, Slot] | None = None

    @staticmethod
    def item_done() -> None:
        """The current item has left the item pipelines (stored, dropped or failed)."""
        slot = CURRENT.get()
        if slot is not None:
            slot.track.settle(slot)

    def load(self, cursors: dict[str, Cursor]) -> None:
        """Cursors read from a store at start; a stream resumes from the most
        advanced (each was true when its transaction committed)."""
        for key, cursor in cursors.items():
            known = self.stored.get(key)
            if known is None or cursor.seq > known.seq:
                self.stored[key] = cursor

    def resume_point(self, key: str) -> tuple[str, int] | None:
        """Where the stream ``key`` resumes, ``(event id, seq)``: its track's resume
        point once it has one, else what the stores hold, else the fallback."""
        track = self.tracks.get(key)
        if track is not None:
            return track.resume_id, track.resume_seq
        cursor = self.stored.get(key)
        if cursor is not None:
            return cursor.event_id, cursor.seq
        return self.fallback.get(key)

    def track(self, key: str) -> Track:
        """The stream's track, created at its first delivery, resumed from
        :meth:`resume_point`."""
        track = self.tracks.get(key)
        if track is None:
            event_id, seq = self.resume_point(key) or ("", 0)
            track = self.tracks[key] = Track(key, event_id, seq)
            track.fence = self.fences.get(key)
            cursor = self.stored.get(key)
            if cursor is not None and cursor.next_id and cursor.seq == seq:
                track.expect = cursor.next_id
        return track


class Hold:
    """A hold on the delivery an item came from: the stream's resume point cannot
    pass it until :meth:`release` (idempotent)."""

    __slots__ = ("slot",)

    def __init__(self, slot: Slot) -> None:
        slot.pending += 1
        self.slot: Slot | None = slot

    @property
    def stream_key(self) -> str | None:
        return self.slot.track.key if self.slot is not None else None

    def release(self) -> None:
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.track.settle(slot)


def hold() -> Hold | None:
    """For a pipeline that stores items itself: call it in ``process_item``, and
    release what it returns once the item is durable in your store. Until then the
    item's stream does not resume past it after a crash. ``None`` when the item does
    not come from a stream."""
    slot = CURRENT.get()
    return Hold(slot) if slot is not None else None


def release(holds: list[Hold | None]) -> None:
    """Release every hold of a batch that is now durable."""
    for held in holds:
        if held is not None:
            held.release()
