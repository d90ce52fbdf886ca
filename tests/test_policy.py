"""The reconnect policy as pure functions: every rule without a network."""

from __future__ import annotations

import random

import pytest

from scrapy_sse.policy import (
    GIVE_UP,
    RECONNECT,
    STOP,
    History,
    Outcome,
    PolicySettings,
    backoff_delay,
    decide,
    parse_retry_after,
)

SETTINGS = PolicySettings(retry_delay=1.0, backoff_max=10.0)


def run(outcome: Outcome, history: History | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    return decide(
        outcome,
        history or History(),
        kwargs.pop("settings", SETTINGS),  # type: ignore[arg-type]
        reconnect_enabled=kwargs.pop("reconnect_enabled", True),  # type: ignore[arg-type]
        now=kwargs.pop("now", 1000.0),  # type: ignore[arg-type]
        rng=random.Random(1),
    )


@pytest.mark.parametrize("reason", ["completed", "no_content", "closed", "spider_closed"])
def test_ends_a_user_or_server_asked_for_are_final(reason: str) -> None:
    assert run(Outcome(reason)).action == STOP


def test_drop_after_healthy_connection_waits_server_retry_exactly() -> None:
    decision = run(Outcome("connection_lost", delivered=10, retry_ms=2500))
    assert (decision.action, decision.delay) == (RECONNECT, 2.5)
    assert decision.history.failures == 0
    assert decision.history.retry_ms == 2500


def test_consecutive_failures_grow_then_cap_and_never_go_below_base() -> None:
    history = History()
    ceilings = []
    for _ in range(8):
        decision = run(Outcome("http_error", status=500), history)
        assert decision.action == RECONNECT
        assert decision.delay >= 1.0
        ceilings.append(decision.delay)
        history = decision.history
    assert max(ceilings) <= 10.0
    assert history.failures == 8


def test_backoff_delay_ranges() -> None:
    rng = random.Random(7)
    for failures, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (30, 10.0)]:
        delays = [backoff_delay(SETTINGS, History(failures=failures), rng) for _ in range(200)]
        assert min(delays) >= 1.0
        assert max(delays) <= ceiling
        if failures:
            assert len(set(delays)) > 100  # jitter


def test_backoff_resets_after_a_healthy_connection() -> None:
    history = History(failures=5, failing_since=900.0, reconnects=5)
    decision = run(Outcome("connection_lost", delivered=1), history)
    assert decision.history.failures == 0
    assert decision.history.failing_since is None
    assert decision.delay == 1.0


def test_retry_after_is_honoured() -> None:
    decision = run(Outcome("http_error", status=429, retry_after=30.0))
    assert (decision.action, decision.delay) == (RECONNECT, 30.0)
    assert parse_retry_after("120", 0) == 120.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert parse_retry_after("soon", 0) is None


@pytest.mark.parametrize("status", [400, 404, 410])
def test_other_4xx_give_up(status: int) -> None:
    assert run(Outcome("http_error", status=status)).action == GIVE_UP


def test_auth_failures_need_a_hook_and_give_up_when_refused_again() -> None:
    assert run(Outcome("http_error", status=401)).action == GIVE_UP
    first = run(Outcome("http_error", status=401, has_auth_hook=True))
    assert (first.action, first.refresh_auth) == (RECONNECT, True)
    again = run(Outcome("http_error", status=403, has_auth_hook=True), first.history)
    assert (again.action, again.reason) == (GIVE_UP, "http_403_after_refresh")


def test_wrong_content_type_and_oversized_events_give_up() -> None:
    assert run(Outcome("bad_content_type", status=200)).action == GIVE_UP
    assert run(Outcome("event_too_large")).action == GIVE_UP


def test_max_reconnects_and_give_up_time() -> None:
    limited = PolicySettings(max_reconnects=2)
    assert (
        run(Outcome("connection_lost"), History(reconnects=1), settings=limited).action == RECONNECT
    )
    assert (
        run(Outcome("connection_lost"), History(reconnects=2), settings=limited).action == GIVE_UP
    )
    timed = PolicySettings(give_up_after=60)
    history = History(failures=3, failing_since=1000.0)
    assert run(Outcome("network_error"), history, settings=timed, now=1059.0).action == RECONNECT
    decision = run(Outcome("network_error"), history, settings=timed, now=1060.0)
    assert (decision.action, decision.reason) == (GIVE_UP, "give_up_after")


def test_reconnect_disabled() -> None:
    assert run(Outcome("server_closed"), reconnect_enabled=False).action == STOP
    assert run(Outcome("connection_lost"), reconnect_enabled=False).action == GIVE_UP


def test_restart_reconnects_at_once() -> None:
    decision = run(Outcome("restart"), History(failures=4))
    assert (decision.action, decision.delay, decision.history.failures) == (RECONNECT, 0.0, 0)


def test_history_round_trips_through_meta() -> None:
    history = History(
        reconnects=3, failures=2, failing_since=5.0, retry_ms=100, auth_refreshed=True
    )
    assert History.from_dict(history.to_dict()) == history


def test_a_post_stream_without_ids_is_resent_only_when_the_spider_restarts_it() -> None:
    from scrapy_sse.policy import RESTART, SERVER_CLOSED

    def action(reason: str) -> str:
        outcome = Outcome(reason=reason, opened=True, resumable=False, resend_allowed=False)
        return str(run(outcome).action)

    assert action(SERVER_CLOSED) == STOP
    assert action("connection_lost") == GIVE_UP
    assert action(RESTART) == RECONNECT


def test_retry_after_prefers_the_millisecond_header_llm_apis_send() -> None:
    from scrapy_sse.policy import retry_after

    assert retry_after({"Retry-After-Ms": "250", "Retry-After": "3"}, 0) == 0.25
    assert retry_after({"retry-after": "3"}, 0) == 3.0
    assert retry_after({"retry-after-ms": "soon", "Retry-After": "2"}, 0) == 2.0
    assert retry_after({}, 0) is None


def test_a_completion_is_ended_by_its_format_and_resent_only_when_cut_short() -> None:
    from scrapy_sse.policy import CONNECTION_LOST, SERVER_CLOSED

    post = {"opened": True, "delivered": 5, "resumable": False, "resend_allowed": False}
    whole = decide(
        Outcome(reason=SERVER_CLOSED, finished=True, **post),
        History(),
        PolicySettings(),
        reconnect_enabled=True,
        now=0.0,
        rng=random.Random(1),
    )
    assert (whole.action, whole.reason) == (STOP, "completed")
    # Whole even if the user allowed re-sending: never a second completion after it.
    again = decide(
        Outcome(reason=SERVER_CLOSED, finished=True, **{**post, "resend_allowed": True}),
        History(),
        PolicySettings(),
        reconnect_enabled=True,
        now=0.0,
        rng=random.Random(1),
    )
    assert again.action == STOP
    # Cut short by a clean close (Gemini has no end marker): a failure, not an end.
    cut = decide(
        Outcome(reason=SERVER_CLOSED, finished=False, **post),
        History(),
        PolicySettings(),
        reconnect_enabled=True,
        now=0.0,
        rng=random.Random(1),
    )
    assert (cut.action, cut.reason) == (GIVE_UP, "incomplete")
    retried = decide(
        Outcome(reason=CONNECTION_LOST, finished=False, **{**post, "resend_allowed": True}),
        History(),
        PolicySettings(),
        reconnect_enabled=True,
        now=0.0,
        rng=random.Random(1),
    )
    assert retried.action == RECONNECT


def test_a_servers_retry_is_held_to_a_sane_range() -> None:
    storm = backoff_delay(SETTINGS, History(retry_ms=0), random.Random(1))
    year = backoff_delay(SETTINGS, History(retry_ms=365 * 86400 * 1000), random.Random(1))
    assert storm == SETTINGS.retry_min == 0.25
    assert year == SETTINGS.retry_max == 3600
    assert backoff_delay(SETTINGS, History(retry_ms=2500), random.Random(1)) == 2.5
