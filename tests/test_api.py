"""Request/response types and the add-on's settings, without a network."""

from __future__ import annotations

import pickle

import pytest
from scrapy import Request
from scrapy.settings import Settings
from scrapy.utils.request import request_from_dict

from scrapy_sse import SSEAddon, SSEEvent, SSERequest, SSEResponse
from scrapy_sse.events import parse_json_or_none
from scrapy_sse.http import is_sse_request
from scrapy_sse.stream import SSEStream


def test_sse_request_defaults() -> None:
    request = SSERequest("https://example.com/stream", last_event_id="41")
    assert request.headers[b"Accept"] == b"text/event-stream"
    assert request.headers[b"Cache-Control"] == b"no-cache"
    assert request.headers[b"Last-Event-ID"] == b"41"
    assert request.meta["dont_cache"] is True
    assert is_sse_request(request)
    assert is_sse_request(Request("https://example.com", meta={"sse": True}))
    assert not is_sse_request(Request("https://example.com"))


def test_sse_request_survives_copy_dict_and_pickle() -> None:
    request = SSERequest(
        "https://example.com/v1/chat",
        method="POST",
        body=b"{}",
        last_event_id="7",
        reconnect=False,
        headers={"Authorization": "Bearer x"},
    )
    for clone in (
        request.copy(),
        request.replace(url="https://example.com/v2/chat"),
        request_from_dict(request.to_dict()),
        pickle.loads(pickle.dumps(request)),
    ):
        assert type(clone) is SSERequest
        assert (clone.last_event_id, clone.reconnect, clone.method, clone.body) == (
            "7",
            False,
            "POST",
            b"{}",
        )
        assert clone.headers[b"Authorization"] == b"Bearer x"
    assert request.replace(last_event_id="8").headers[b"Last-Event-ID"] == b"8"


def test_sse_response_replace_keeps_stream() -> None:
    request = SSERequest("https://example.com/s")
    stream = SSEStream(request, max_event_size=1000)
    response = SSEResponse(request.url, stream=stream, request=request)
    assert response.replace(status=200).stream is stream


def test_event_value_semantics() -> None:
    event = SSEEvent("price", '{"p": 1}', "9", 1500, source=object())
    assert (event.event, event.id, event.retry, event.json()) == ("price", "9", 1500, {"p": 1})
    assert event == SSEEvent("price", '{"p": 1}', "9", 1500)
    assert pickle.loads(pickle.dumps(event)) == event
    assert event.url is None


def test_addon_installs_handler_and_keeps_user_handler_as_fallback() -> None:
    settings = Settings(
        {"DOWNLOAD_HANDLERS": {"https": "scrapy.core.downloader.handlers.http2.H2DownloadHandler"}}
    )
    SSEAddon().update_settings(settings)
    handlers = settings.getdict("DOWNLOAD_HANDLERS")
    assert handlers["http"] == handlers["https"] == "scrapy_sse.handler.SSEDownloadHandler"
    assert settings.getdict("SSE_FALLBACK_HANDLERS") == {
        "https": "scrapy.core.downloader.handlers.http2.H2DownloadHandler"
    }
    assert settings.getint("SSE_QUEUE_SIZE") == 1000
    assert settings.getlist("SSE_DONE_DATA") == ["[DONE]"]
    middlewares = settings.getdict("SPIDER_MIDDLEWARES")
    assert any("SSESpiderMiddleware" in str(key) for key in middlewares)
    # Running it twice (settings reloaded) must not make the handler its own fallback.
    SSEAddon().update_settings(settings)
    assert "http" not in settings.getdict("SSE_FALLBACK_HANDLERS")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
        ("[DONE]", None),
        ("42", 42),
        ("-1.5e3", -1500.0),
        ('"text"', "text"),
        ("plain text", None),
        ('{"a": 1} ', {"a": 1}),
        ('{"a": 1} trailing', None),
        ('{"a": 1}{"b": 2}', None),
        ("{broken", None),
        ("", None),
        ("nul", None),
    ],
)
def test_event_items_carry_the_data_parsed_as_json_when_it_is_json(
    data: str, expected: object
) -> None:
    assert parse_json_or_none(data) == expected


def test_addon_puts_its_feed_exporter_in_place_unless_feeds_are_turned_off() -> None:
    from scrapy.extensions.feedexport import FeedExporter
    from scrapy.utils.conf import build_component_list

    from scrapy_sse.feedexport import SSEFeedExporter
    from scrapy_sse.logstats import SSELogStats

    def extensions(user: dict[object, object]) -> list[object]:
        settings = Settings({"EXTENSIONS": user})
        SSEAddon().update_settings(settings)
        return build_component_list(settings.get_component_priority_dict_with_base("EXTENSIONS"))

    default = extensions({})
    assert SSEFeedExporter in default and FeedExporter not in default
    for off in ({FeedExporter: None}, {"scrapy.extensions.feedexport.FeedExporter": None}):
        chosen = extensions(off)
        assert SSEFeedExporter not in chosen and FeedExporter not in chosen
    assert SSELogStats not in extensions({SSELogStats: None})  # (kept off)
