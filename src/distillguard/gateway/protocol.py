"""uvicorn's HTTP protocol with a deadline on request headers (slowloris).

uvicorn closes idle keep-alive connections but puts no limit on how long a client may take
to send a request's headers: a client dripping a header line now and then holds its
connection (and a file descriptor) forever. :class:`HeaderTimeoutProtocol` closes a
connection whose request line and headers are not complete ``header_timeout_s`` after the
connection opened or the request's first byte arrived. The body has its own deadline in the
app (``body_timeout_s``, 408).

Use ``uvicorn.run(app, http="distillguard.gateway.protocol:HeaderTimeoutProtocol")`` (the
gateway CLI does, when ``httptools`` is installed).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["IMPORT_PATH", "HeaderTimeoutProtocol"]

IMPORT_PATH = "distillguard.gateway.protocol:HeaderTimeoutProtocol"


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose headers are too slow to arrive."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s,
                                                         self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()                 # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
