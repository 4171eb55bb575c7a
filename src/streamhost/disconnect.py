"""Run a piece of ASGI work until it finishes or the client goes away, whichever comes first.

Both servers need this: the model server stops a generation whose client left (its batch row is
freed at the next engine step, docs/architecture.md pitfall 4), and the platform's gateway closes
its upstream call to an instance, which is how a client that leaves the gateway stops the model
server's generation too. One implementation keeps the cancellation rules the same in both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the request body must already have been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def race_disconnect(
    receive: Receive, work: Awaitable[Any], finished: Callable[[], bool] = lambda: False
) -> tuple[bool, Any]:
    """Run ``work`` until it is done or the client disconnects; return ``(disconnected, result)``.

    On disconnect ``work`` is cancelled and allowed to unwind before this returns, unless
    ``finished()`` says the answer was already handed over in full (then ``work`` runs to its end
    and the request counts as served). If this coroutine is itself cancelled (a forced shutdown),
    ``work`` is cancelled too and the cancellation propagates. ``work``'s own errors propagate.
    """
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if job.done() or finished():
            return False, await job
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        return True, None
    except BaseException:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        raise
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
