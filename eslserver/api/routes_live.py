"""``GET /api/v1/events/stream``: live changes as server-sent events (the dashboard, the shelf).

Each change from `Server.watch` is one event whose name is the change's ``type`` (``labels``,
``prices``, ``gateway``…) and whose data is the change as JSON. The first event is always
``ready``: the subscription is live, so a client that (re)loads its state after ``ready``
misses nothing. A comment line every `HEARTBEAT_S` keeps proxies from timing the stream out
and finds clients that went away. ``limit`` ends the stream after that many events (``ready``
included), for clients that want only the next change.

The browser's ``EventSource`` cannot send an ``Authorization`` header, so the web UI reads
the stream with ``fetch`` (which can); the token is never put in the URL.

Every open stream is a task owned by the application: `setup_live` registers an
``on_shutdown`` hook that ends them all, so closing the server does not wait for clients to
hang up (aiohttp would otherwise wait its whole shutdown timeout) and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any, Final, cast

from aiohttp import web

from eslserver.api.routing import ANY_ROLE, Call, Route, query_int

__all__ = ["HEARTBEAT_S", "ROUTES", "STREAMS_KEY", "setup_live"]

log = logging.getLogger(__name__)

HEARTBEAT_S: Final = 15.0


class _Streams:
    """The open event streams of one application (their pump tasks)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()


STREAMS_KEY: Final = web.AppKey("eslserver.live_streams", _Streams)


def _event(name: str, data: object) -> bytes:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"event: {name}\ndata: {body}\n\n".encode()


async def _pump(call: Call, response: web.StreamResponse, limit: int | None) -> None:
    """Write changes to `response` until the client goes away, `limit` is reached, or the
    task is cancelled (server shutdown)."""
    sent = 0
    changes = cast(AsyncGenerator[dict[str, Any], None], call.server.watch())  # an async generator
    pending: asyncio.Task[dict[str, Any]] | None = None
    try:
        await response.write(b"retry: 2000\n" + _event("ready", {"heartbeat_s": HEARTBEAT_S}))
        sent += 1
        while limit is None or sent < limit:
            if pending is None:
                pending = asyncio.ensure_future(anext(changes))
                pending.set_name("eslserver-sse-next")
            done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
            if not done:
                await response.write(b": keep-alive\n\n")
                continue
            change, pending = pending.result(), None
            await response.write(_event(str(change.get("type", "change")), change))
            sent += 1
    except ConnectionError as exc:  # aiohttp: ClientConnectionResetError on a closed transport
        log.debug("event stream client went away: %s", exc)
    finally:
        if pending is not None:  # cancelling it also closes the watch iterator
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await changes.aclose()


async def stream(call: Call) -> web.StreamResponse:
    limit = query_int(call.request, "limit", default=None, lo=1, hi=1_000_000)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    await response.prepare(call.request)
    if call.request.method == "HEAD":  # the headers a GET would get, and no stream
        await response.write_eof()
        return response
    streams = call.request.app[STREAMS_KEY].tasks if STREAMS_KEY in call.request.app else None
    task = asyncio.create_task(_pump(call, response, limit), name="eslserver-sse")
    if streams is not None:
        streams.add(task)
    try:
        await asyncio.wait({task})  # never raises for the task; a cancel of this handler does
    finally:
        if streams is not None:
            streams.discard(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled() and task.exception() is not None:
        log.error("event stream failed", exc_info=task.exception())
    return response


async def _end_streams(app: web.Application) -> None:
    tasks = list(app[STREAMS_KEY].tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def setup_live(app: web.Application) -> None:
    """Own the event streams of `app`: they end when the application shuts down."""
    app[STREAMS_KEY] = _Streams()
    app.on_shutdown.append(_end_streams)


ROUTES: Final = (
    Route("GET", "/api/v1/events/stream", stream, ANY_ROLE, chain="whole"),
)
