"""The parser against the WHATWG processing model: fixed cases from the spec and
web-platform-tests, and property tests that every way of cutting a byte stream into
reads gives the same events as a literal reading of the spec."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scrapy_sse import SSEComment, SSEEvent, SSEEventTooLarge, SSEParser

from .reference_parser import reference_parse


def parse(*chunks: bytes, **kwargs: object) -> list[object]:
    parser = SSEParser(**kwargs)  # type: ignore[arg-type]
    out: list[object] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    parser.close()
    return out


def test_basic_fields_and_default_type() -> None:
    assert parse(b"event: tick\nid: 7\ndata: a\ndata: b\n\ndata: c\n\n") == [
        SSEEvent("tick", "a\nb", "7"),
        SSEEvent("message", "c", "7"),
    ]


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_all_three_line_ends(end: bytes) -> None:
    stream = b"data: x" + end + b"data: y" + end + end
    assert parse(stream) == [SSEEvent("message", "x\ny")]


def test_crlf_split_across_reads_is_one_line_end() -> None:
    # If the CR and LF were two line ends, the second would dispatch "a" early and
    # "b" would become a separate event.
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SSEEvent("message", "a\nb")]


def test_an_empty_read_between_cr_and_lf_keeps_them_one_line_end() -> None:
    assert parse(b"data: a\r", b"", b"\ndata: b\r\n\r\n") == [SSEEvent("message", "a\nb")]


def test_a_lf_after_other_bytes_that_followed_a_cr_is_a_line_end_of_its_own() -> None:
    # The CR ended "data: a"; "data: b" came in a read without a line end; the LF that
    # starts the last read ends "data: b" and the next one dispatches.
    parser = SSEParser()
    assert list(parser.feed(b"data: a\r")) == []
    assert list(parser.feed(b"data: b")) == []
    assert parser.feed(b"\n\n") == [SSEEvent("message", "a\nb")]


def test_a_read_ending_inside_a_block_holds_it_and_dispatches_on_the_blank_line() -> None:
    # Reads with one line end that cannot end the block are held undecoded; the event
    # comes out with the read that brings its blank line, not earlier or later.
    parser = SSEParser()
    parser.feed(b"data: warm\n\n")  # leaves the first-read text path
    reads = [b"event: t\nid", b": 7\nda", b"ta: x\nd", b"ata: y\n", b"\n"]
    assert [list(parser.feed(read)) for read in reads[:-1]] == [[], [], [], []]
    assert parser.feed(reads[-1]) == [SSEEvent("t", "x\ny", "7")]


def test_a_lone_lf_completing_a_crlf_leaves_nothing_pending() -> None:
    # (Else the end of the stream would count an incomplete event that never was.)
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == [SSEEvent("message", "a")]
    assert list(parser.feed(b"\n")) == []
    assert not parser.pending
    assert parser.close() is False


def test_a_comment_starting_a_block_counts_when_its_line_ends_however_it_is_cut() -> None:
    parser = SSEParser(comments=True)
    parser.feed(b"data: warm\n\n")  # leaves the first-read text path
    assert list(parser.feed(b":")) == []
    assert parser.feed(b" hb\n") == [SSEComment("hb")]
    assert parser.comments == 1


def test_an_oversized_line_is_refused_as_soon_as_a_read_passes_the_limit() -> None:
    parser = SSEParser(max_event_size=100)
    parser.feed(b"data: warm\n\n")
    with pytest.raises(SSEEventTooLarge):
        parser.feed(b"data: " + b"x" * 120 + b"\nid")


def test_cr_at_end_of_read_dispatches_without_waiting() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == [SSEEvent("message", "a")]


def test_bom_stripped_once_even_when_split() -> None:
    assert parse(b"\xef\xbb", b"\xbfdata: 1\n\n") == [SSEEvent("message", "1")]
    # A second BOM is part of the field name, so that line is an unknown field.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: 1\n\ndata: 2\n\n") == [SSEEvent("message", "2")]


def test_utf8_split_across_reads() -> None:
    raw = "data: é€😀\n\n".encode()
    chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert parse(*chunks) == [SSEEvent("message", "é€😀")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert parse(b"data: a\xffb\xc3\n\n") == [SSEEvent("message", "a\ufffdb\ufffd")]


def test_id_with_nul_ignored_and_id_persists_and_resets() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\ndata: c\n\nid\ndata: d\n\n"
    assert [e.id for e in parse(stream)] == ["1", "1", "1", ""]  # type: ignore[attr-defined]


def test_id_only_block_updates_last_event_id_without_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 9\n\n") == []
    assert parser.last_event_id == "9"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"3000", 3000),
        (b"-5", None),
        (b"+5", None),
        (b"1_0", None),
        (b"10abc", None),
        (b"", None),
        (b" 5", 5),
    ],
)
def test_retry_only_digits(value: bytes, expected: int | None) -> None:
    # "retry: 5" (one space) is the value "5"; "retry:  5" would be " 5" and ignored.
    parser = SSEParser()
    events = parser.feed(b"retry:" + value + b"\ndata: x\n\n")
    assert events[0].retry == expected  # type: ignore[union-attr]
    assert parser.retry == expected


def test_no_event_for_empty_data_buffer_but_empty_data_line_counts() -> None:
    assert parse(b"event: x\n\nretry: 5\n\n: c\n\ndata\n\n") == [SSEEvent("message", "")]


def test_unterminated_event_dropped_at_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: complete\n\ndata: partial\n") == [SSEEvent("message", "complete")]
    assert parser.close() is True


def test_colon_handling_and_unknown_fields() -> None:
    stream = b"data:no-space\ndata:  two-spaces\nfoo: bar\ndata\n\n"
    assert parse(stream) == [SSEEvent("message", "no-space\n two-spaces\n")]


def test_comments_counted_and_surfaced_on_request() -> None:
    parser = SSEParser(comments=True)
    assert parser.feed(b": ping\n:raw\ndata: x\n\n") == [
        SSEComment("ping"),
        SSEComment("raw"),
        SSEEvent("message", "x"),
    ]
    assert parser.comments == 2
    assert parse(b": ping\n\n") == []


def test_seeded_last_event_id_applies_to_events_without_id() -> None:
    assert parse(b"data: x\n\n", last_event_id="41") == [SSEEvent("message", "x", "41")]


def test_many_blank_lines_and_block_starting_with_blank_line() -> None:
    stream = b"data: a\n\n\n\n\ndata: b\n\n\n"
    assert parse(stream) == [SSEEvent("message", "a"), SSEEvent("message", "b")]


def test_event_too_large_keeps_events_before_it() -> None:
    parser = SSEParser(max_event_size=100)
    with pytest.raises(SSEEventTooLarge) as info:
        parser.feed(b"data: ok\n\ndata: " + b"x" * 200 + b"\n\n")
    assert info.value.events == [SSEEvent("message", "ok")]


def test_unterminated_huge_line_is_refused_before_it_completes() -> None:
    parser = SSEParser(max_event_size=1000)
    with pytest.raises(SSEEventTooLarge):
        for _ in range(200):
            parser.feed(b"x" * 7)


def test_huge_multiline_event_in_tiny_reads_is_linear() -> None:
    # 20,000 lines in 7-byte reads: quadratic re-splitting would take minutes.
    raw = b"".join(b"data: %05d\n" % i for i in range(20_000)) + b"\n"
    parser = SSEParser()
    events: list[object] = []
    for i in range(0, len(raw), 7):
        events.extend(parser.feed(raw[i : i + 7]))
    assert len(events) == 1
    assert events[0].data.split("\n")[-1] == "19999"  # type: ignore[attr-defined]


# --- properties -------------------------------------------------------------------

_field_lines = st.one_of(
    st.builds(lambda v: "data: " + v, st.text(max_size=20)),
    st.builds(lambda v: "data:" + v, st.text(max_size=5)),
    st.just("data"),
    st.builds(lambda v: "event: " + v, st.text(max_size=8)),
    st.builds(lambda v: "id: " + v, st.text(max_size=6)),
    st.just("id"),
    st.builds(lambda v: "retry: " + v, st.sampled_from(["10", "abc", "", "-1", "٣"])),
    st.builds(lambda v: ":" + v, st.text(max_size=8)),
    st.builds(lambda v: "unknown: " + v, st.text(max_size=5)),
    st.just(""),
)
_line_ends = st.sampled_from(["\n", "\r", "\r\n"])


#: What most servers send: LF only, mostly one-line data events (the parser's byte path).
_lf_lines = st.one_of(
    st.builds(lambda v: "data: " + v, st.text(max_size=20)),
    st.builds(lambda v: "data: " + v, st.text(max_size=20)),
    st.just(""),
    st.just(""),
    _field_lines,
)


@st.composite
def event_streams(draw: st.DrawFn, lf_only: bool = False) -> bytes:
    pairs = st.tuples(_lf_lines, st.just("\n")) if lf_only else st.tuples(_field_lines, _line_ends)
    lines = draw(st.lists(pairs, max_size=40))
    text = "".join(
        # A line ending in CR followed by one starting with LF would merge (CRLF) in
        # any parser; the generator keeps text lines free of raw CR/LF.
        line.replace("\r", " ").replace("\n", " ") + end
        for line, end in lines
    )
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.booleans()):
        # Sprinkle invalid UTF-8.
        pos = draw(st.integers(0, len(data)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\x80"]))
        data = data[:pos] + bad + data[pos:]
    return data


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    chunks: list[bytes] = []
    last = 0
    for point in [*points, len(data)]:
        chunks.append(data[last:point])
        last = point
    return chunks


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_any_cut_gives_the_events_of_the_spec(data: st.DataObject) -> None:
    stream = data.draw(event_streams())
    chunks = data.draw(cuts(stream))
    assert parse(*chunks) == reference_parse(stream)


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_any_cut_of_an_lf_only_stream_gives_the_events_of_the_spec(
    data: st.DataObject,
) -> None:
    stream = data.draw(event_streams(lf_only=True))
    chunks = data.draw(cuts(stream))
    assert parse(*chunks) == reference_parse(stream)


@pytest.mark.parametrize("seed", range(40))
def test_long_lf_streams_in_random_reads_match_the_spec(seed: int) -> None:
    # Hundreds of events per stream, so most reads start and end mid-stream with the
    # parser in its byte path: one-line data events, typed events with ids, multi-line
    # events, comments, empty data, invalid UTF-8, and reads of 1 byte to 4 KiB.
    rng = random.Random(seed)
    words = ["x", "café", "日本", "🙂", '{"a": 1}', "", " lead", "é" * 300, "z" * 5000]
    blocks = []
    for n in range(300):
        kind = rng.random()
        if kind < 0.6:
            blocks.append(f"data: {rng.choice(words)}{n}\n\n")
        elif kind < 0.75:
            blocks.append(f"event: t{n % 3}\nid: {n}\ndata: {rng.choice(words)}\n\n")
        elif kind < 0.85:
            lines = "".join(f"data: {rng.choice(words)}\n" for _ in range(rng.randint(2, 4)))
            blocks.append(lines + "\n")
        elif kind < 0.9:
            blocks.append(": heartbeat\n\n")
        elif kind < 0.95:
            blocks.append("data:\n\n\n")
        else:
            blocks.append("data: \xff\n\n")
    stream = "".join(blocks).encode("utf-8", "surrogateescape")
    stream = stream.replace("\xff".encode(), b"\xff")
    chunks = []
    pos = 0
    while pos < len(stream):
        size = rng.choice((1, 7, 64, 200, 4096))
        chunks.append(stream[pos : pos + size])
        pos += size
    assert parse(*chunks) == reference_parse(stream)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_arbitrary_bytes_never_crash_and_cuts_agree(stream: bytes, data: st.DataObject) -> None:
    chunks = data.draw(cuts(stream))
    assert parse(*chunks) == parse(stream) == reference_parse(stream)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_one_byte_reads_match(data: st.DataObject) -> None:
    stream = data.draw(event_streams())
    assert parse(*[stream[i : i + 1] for i in range(len(stream))]) == reference_parse(stream)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"id: 7\ndata: a\n\ndata: b\n\n"],  # general path
        [b"id: 7\ndata: a\n\n", b"data: b\n\n"],  # one-event reads
        [b"data: x\n\n", b"id: 7\ndata: a\n\ndata: b\n\ndata: c\n\n"],  # data split
        [b": hb\nid: 7\n", b"data: a\n\n", b"data: b\n\n"],  # id line folded first
    ],
)
def test_own_id_marks_events_whose_block_carried_the_id(chunks: list[bytes]) -> None:
    events = [e for e in parse(*chunks) if e.data != "x"]  # type: ignore[attr-defined]
    assert [(e.data, e.id, e.own_id) for e in events][:2] == [  # type: ignore[attr-defined]
        ("a", "7", True),
        ("b", "7", False),
    ]


def test_data_lines_without_colon_count_toward_the_size_limit() -> None:
    with pytest.raises(SSEEventTooLarge):
        SSEParser(max_event_size=10).feed(b"data\n" * 100 + b"\n")


def test_a_comment_line_counts_when_it_arrives_not_when_a_block_ends() -> None:
    # Heartbeats sent as a bare comment line (no blank line after it) between events.
    parser = SSEParser(comments=True)
    assert parser.feed(b"data: a\n\n") == [SSEEvent(data="a")]
    assert parser.feed(b": heartbeat\n") == [SSEComment("heartbeat")]
    assert parser.comments == 1
    assert parser.feed(b"data: b\n\n: beat\n") == [SSEEvent(data="b"), SSEComment("beat")]
    assert parser.comments == 2


@pytest.mark.parametrize("read_size", [None, 7, 512, 4096])
def test_a_stream_that_changes_shape_keeps_giving_the_events_of_the_spec(
    read_size: int | None,
) -> None:
    # The parser picks its fast path from the blocks it has seen (data-only events,
    # event/id/data blocks, anything else); each change of shape must go unnoticed.
    phases = [
        [f'data: {{"n": {n}}}\n\n' for n in range(300)],
        # (every tenth id empty: it resets the last event id)
        [f"event: tick\nid: {'' if n % 10 == 0 else n}\ndata: {n}\n\n" for n in range(300)],
        [f"data: a{n}\r\ndata: b\r\n: c\r\nretry: {n}\r\n\r\n" for n in range(300)],
        [f"data: x\ndata: y{n}\nid: m{n}\n\n" for n in range(300)],
        [f"data: {n}\n\n" for n in range(300)],
        [f"id: {n}\nevent: t\ndata: {n}\n\n" for n in range(300)],
    ]
    blocks = [block.encode() for phase in phases for block in phase]
    stream = b"".join(blocks)
    if read_size is None:
        chunks = blocks
    else:
        chunks = [stream[i : i + read_size] for i in range(0, len(stream), read_size)]
    events = parse(*chunks)
    assert events == reference_parse(stream)
    assert len(events) == 1800


def test_a_heartbeat_after_an_extra_blank_line_counts_when_it_arrives() -> None:
    parser = SSEParser(comments=True)
    assert parser.feed(b"data: a\n\n") == [SSEEvent(data="a")]
    assert parser.feed(b"\n: hb\n") == [SSEComment("hb")]


def test_an_event_completed_before_an_oversized_line_in_the_same_read_is_kept() -> None:
    parser = SSEParser(max_event_size=100)
    parser.feed(b"data: first\n\n")
    with pytest.raises(SSEEventTooLarge) as raised:
        parser.feed(b"data: a\n\n" + b"x" * 200)
    assert raised.value.events == [SSEEvent(data="a")]


def test_a_retry_of_thousands_of_digits_is_kept_as_the_longest() -> None:
    from scrapy_sse.parser import MAX_RETRY_MS

    parser = SSEParser()
    parser.feed(b"retry: " + b"9" * 5000 + b"\ndata: x\n\n")
    assert parser.retry == MAX_RETRY_MS
