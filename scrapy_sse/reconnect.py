"""What follows the end of one connection of a stream: reconnect, give up, or stop.

Every end reaches :meth:`StreamEnds.after`, whether the stream ended after it opened
(the spider middleware calls it once the callback is done with the stream) or the
connection never opened (refused, timed out, an error status, a wrong content type:
the downloader middleware routes that failure to :meth:`StreamEnds.connection_failed`
as the request's errback). The pure :func:`~scrapy_sse.policy.decide` says what to do;
this module does it: waits the delay, builds the next request (``Last-Event-ID`` of
the last delivered event, fresh credentials from the spider's ``sse_refresh_auth``),
or hands the error to the user's errback.
"""

from __future__ import annotations

import inspect
import logging
import random
from dataclasses import replace
from time import time
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from . import signals
from .completions import Completions, is_completion
from .dispatch import callback_output
from .errors import SSEResponseError, SSEStreamError
from .failures import FailureLog, cause
from .handler import SKIP_KEY
from .http import STREAM_KEY, SSERequest, redact_url
from .policy import GIVE_UP, RECONNECT, Decision, History, Outcome, decide, retry_after
from .settings import meta_flag
from .stream import FINGERPRINT_SALT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from scrapy import Request
    from scrapy.crawler import Crawler

    from .extension import SSEExtension
    from .stream import SSEStream

logger = logging.getLogger(__name__)

HISTORY_KEY = "sse_history"
#: Seconds an LLM completion's request may keep failing (refused, 429, 5xx) before it
#: is given up, unless ``SSE_GIVE_UP_AFTER`` is set.
LLM_GIVE_UP_AFTER = 300.0


class StreamEnds:
    def __init__(self, crawler: Crawler, state: SSEExtension, rng: random.Random | None = None):
        self.crawler = crawler
        self.state = state
        self._rng = rng or random.Random()
        self.completions = Completions(crawler, state)

    async def connection_failed(
        self, stream: SSEStream, errback: Callable[[Failure], Any] | None, failure: Failure
    ) -> AsyncIterator[Any]:
        """The errback of a stream request whose connection never opened: ``stream``
        is the ended stream that stands for it (its error is ``failure``'s),
        ``errback`` the user's own, which the request gets back."""
        stream.request.errback = errback
        async for value in self.after(stream, errback):
            yield value

    def _outcome(self, stream: SSEStream) -> Outcome:
        error = stream.error
        status = None
        wait = None
        reason = stream.end_reason or ""
        if isinstance(error, SSEResponseError):
            status = error.status
            if status == 200:
                reason = "bad_content_type"
            wait = retry_after(error.headers, time())
        request = stream.request
        if is_completion(request):
            fields = self.completions.outcome(stream)
            resumable = fields["resumable"]
            resend_allowed = fields["resend_allowed"]
            finished: bool | None = fields["finished"]
        else:
            resumable = bool(stream.last_delivered_id)
            resend_allowed = request.method in ("GET", "HEAD") or meta_flag(
                self.state.settings.for_request(request, "resend_post")
            )
            finished = None
        return Outcome(
            reason=reason,
            status=status,
            delivered=stream.events_delivered,
            retry_ms=stream.parser.retry,
            retry_after=wait,
            has_auth_hook=hasattr(self.crawler.spider, "sse_refresh_auth"),
            opened=stream.response is not None,
            resumable=resumable,
            resend_allowed=resend_allowed,
            finished=finished,
        )

    async def after(
        self, stream: SSEStream, errback: Callable[[Failure], Any] | None
    ) -> AsyncIterator[Any]:
        """Reconnect, give up (``errback`` gets the error) or stop, as the policy says."""
        if self.state.registry.closing:
            # The crawl is stopping: no reconnect, no errback; a completion in the
            # making is still delivered, marked incomplete (spider_closed).
            await self.crawler.signals.send_catch_log_async(
                signals.stream_ended,
                request=stream.request,
                reason="spider_closed",
                error=stream.error,
                events=stream.events_delivered,
            )
            if is_completion(stream.request):
                async for value in self.completions.deliver(stream):
                    yield value
            return
        stats = self.crawler.stats
        assert stats is not None
        request = stream.request
        outcome = self._outcome(stream)
        history = History.from_dict(request.meta.get(HISTORY_KEY))
        policy = self.state.settings.policy(request)
        if is_completion(request) and policy.give_up_after is None:
            # (An LLM API that keeps refusing, 429 or 5xx, would hold the request forever;
            # a rate limit clears within minutes.)
            policy = replace(policy, give_up_after=LLM_GIVE_UP_AFTER)
        decision = decide(
            outcome,
            history,
            policy,
            reconnect_enabled=getattr(request, "reconnect", True)
            and request.meta.get("sse_reconnect", True),
            now=time(),
            rng=self._rng,
        )
        if decision.action == RECONNECT and is_completion(request):
            refused = self.completions.refusal(stream)
            if refused is not None:
                decision = Decision(GIVE_UP, reason=refused, history=history)
        cluster = self.state.cluster
        if cluster is not None:
            key = request.meta.get(STREAM_KEY, "")
            if decision.action != RECONNECT:
                cluster.stream_ended(key, decision.reason, gave_up=decision.action == GIVE_UP)
            elif not cluster.holds(key):
                return  # (handed over or lost: another worker of the cluster reads it)
        failed = self._failed(stream, outcome, decision)
        attempt = 0
        if failed is None:
            if stream.events_delivered:
                FailureLog(request.meta).clear()
        else:
            attempt = self._log_failure(stream, failed, decision)
            await self.crawler.signals.send_catch_log_async(
                signals.connection_failed,
                request=request,
                reason=failed[0],
                message=failed[1],
                failure=stream.error,
                response=stream.response,
                attempt=attempt,
                retrying=decision.action == RECONNECT,
            )
        if decision.action == RECONNECT:
            async for value in self._reconnect(stream, errback, decision, outcome, failed):
                yield value
            return
        await self.crawler.signals.send_catch_log_async(
            signals.stream_ended,
            request=request,
            reason=decision.reason,
            error=stream.error,
            events=stream.events_delivered,
        )
        if is_completion(request):
            async for value in self.completions.deliver(stream):
                yield value
        if decision.action == GIVE_UP:
            stats.inc_value(f"sse/give_up/{decision.reason}")
            error = stream.error or SSEStreamError(
                f"SSE stream {redact_url(stream.url)} ended ({outcome.reason})", outcome.reason
            )
            logger.error(
                "Giving up on SSE stream %s after %d reconnect(s): %s (%s)",
                redact_url(stream.url),
                history.reconnects,
                decision.reason,
                failed[1] if failed else error,
                extra={"spider": self.crawler.spider},
            )
            if errback is not None:
                failure = Failure(error)
                failure.request = request  # type: ignore[attr-defined]
                async for value in callback_output(errback(failure)):
                    yield value

    def _failed(
        self, stream: SSEStream, outcome: Outcome, decision: Decision
    ) -> tuple[str, str] | None:
        """``(kind, cause)`` when this connection failed (it never opened, broke, or
        the server refused it), counted in ``sse/failures/<kind>``; ``None`` for an
        end that is no failure (the server closed after delivering, a completion)."""
        if (
            outcome.opened
            and stream.error is None
            and outcome.status is None
            and outcome.finished is not False
            and (outcome.delivered or decision.action != RECONNECT)
        ):
            return None
        kind, message = cause(stream.error, outcome.reason)
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value(f"sse/failures/{kind}")
        return kind, message

    async def _reconnect(
        self,
        stream: SSEStream,
        errback: Callable[[Failure], Any] | None,
        decision: Decision,
        outcome: Outcome,
        failed: tuple[str, str] | None,
    ) -> AsyncIterator[Any]:
        stats = self.crawler.stats
        assert stats is not None
        request = stream.request
        # (A completion is resumed by URL, never by Last-Event-ID: see Completions.)
        resume_id = "" if is_completion(request) else stream.last_delivered_id
        stats.inc_value(f"sse/reconnects/{outcome.reason}")
        if failed is None:
            logger.info(
                "Reconnecting SSE stream %s in %.2f s (%s; %d event(s) delivered on that "
                "connection; resuming after id %r; reconnect #%d)",
                redact_url(stream.url),
                decision.delay,
                outcome.reason,
                outcome.delivered,
                resume_id,
                decision.history.reconnects,
                extra={"spider": self.crawler.spider},
            )
        if not await self.state.registry.sleep(decision.delay):
            # The spider is closing: this stream ends here.
            await self.crawler.signals.send_catch_log_async(
                signals.stream_ended,
                request=request,
                reason="spider_closed",
                error=stream.error,
                events=stream.events_delivered,
            )
            return
        meta = dict(request.meta)
        meta[HISTORY_KEY] = decision.history.to_dict()
        meta[SKIP_KEY] = {"salt": FINGERPRINT_SALT, "events": stream.recent}
        meta.pop("download_latency", None)
        # (The errback: the user's own, also when a failed connection replaced it.)
        kwargs: dict[str, Any] = {"dont_filter": True, "meta": meta, "errback": errback}
        update = await self._refresh_auth(request, stream, decision.refresh_auth)
        if update is not None:
            headers = request.headers.copy()
            for name, value in (update.get("headers") or {}).items():
                headers[name] = value
            kwargs["headers"] = headers
            if update.get("cookies") is not None:
                kwargs["cookies"] = update["cookies"]
        if is_completion(request):
            self.completions.next_request(stream, kwargs)
        if isinstance(request, SSERequest):
            kwargs["last_event_id"] = resume_id or request.last_event_id
        new_request = request.replace(**kwargs)
        if resume_id and not isinstance(new_request, SSERequest):
            new_request.headers[b"Last-Event-ID"] = resume_id.encode("utf-8")
        yield new_request

    def _log_failure(self, stream: SSEStream, failed: tuple[str, str], decision: Decision) -> int:
        """Log a failed connection that is to be retried: the first failure of a kind
        in an episode as a WARNING in the failure's own words, that kind's repeats only
        at the 2nd, 4th, 8th... attempt, the rest at DEBUG (a give-up has its own
        ERROR line). Returns the failures of this kind in the episode."""
        kind, message = failed
        log = FailureLog(stream.request.meta)
        worth_a_line, count, seconds = log.failed(kind, time(), stream.events_delivered)
        if decision.action != RECONNECT:
            return count
        url = redact_url(stream.url)
        spider = {"spider": self.crawler.spider}
        if count == 1:
            logger.warning(
                "SSE stream %s failed: %s; reconnecting in %.2f s",
                url,
                message,
                decision.delay,
                extra=spider,
            )
        elif worth_a_line:
            logger.warning(
                "SSE stream %s still failing after %d attempts in %.0f s: %s; next attempt "
                "in %.2f s (repeats are logged at the 2nd, 4th, 8th... attempt)",
                url,
                count,
                seconds,
                message,
                decision.delay,
                extra=spider,
            )
        else:
            logger.debug("SSE stream %s failed again (%d): %s", url, count, message, extra=spider)
        return count

    async def _refresh_auth(
        self, request: Request, stream: SSEStream, required: bool
    ) -> dict[str, Any] | None:
        """Credentials for the next connection from ``spider.sse_refresh_auth``.

        Called before every reconnect, not only after a 401/403: an expiring token is
        renewed before the server has to refuse it.
        """
        hook = getattr(self.crawler.spider, "sse_refresh_auth", None)
        if hook is None:
            return None
        response_or_failure: Any = stream.response
        if stream.error is not None:
            response_or_failure = Failure(stream.error)
        try:
            result = hook(request, response_or_failure)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.error(
                "sse_refresh_auth failed for %s; reconnecting with the old credentials",
                redact_url(request.url),
                exc_info=True,
                extra={"spider": self.crawler.spider},
            )
            return None
        if required and self.crawler.stats is not None:
            self.crawler.stats.inc_value("sse/auth_refreshed")
        return dict(result) if result else None
