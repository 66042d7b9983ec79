"""The providers' HTTP client: the openai SDK's httpx2 API on an aiohttp transport.

aiohttp parses HTTP in C, and on a streamed turn it costs a third of the CPU of a
pure-Python HTTP stack (docs/adr/0006-upstream-http-on-aiohttp.md). The SDK ships such a
client (`openai.DefaultAioHttpClient`, a vendored httpx-aiohttp transport); this module
keeps its transport but sends each request itself, because as shipped:

- nothing bounds writing the request: aiohttp has no write timeout, and its read timeout
  starts only once the body is sent, so an upstream that stops reading a request held it
  until TOTAL_TIMEOUT_SECONDS. Here WRITE_TIMEOUT_SECONDS bounds each stretch without
  progress, as httpx's write timeout does (the first stretch also has the connect time);
- every `aiohttp.ClientConnectionError`, a server hanging up included, came out as a
  connect *timeout*. Here a timeout is a timeout and a hang-up a transport error, so the
  SDK and the provider report each for what it is.

A response also carries its body's `BodyReader` in `response.extensions[BODY_READER]`:
the provider reads the event stream straight from aiohttp's buffer through it, one call
per arrival, instead of through httpx2's four layers of byte iterators.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx2
from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

CertTypes = str | tuple[str, str] | tuple[str, str, str]
BODY_READER = "byok.body_reader"  # the response extension that holds its BodyReader
_LIMITS = httpx2.Limits()  # httpx2's default, as in the methods overridden below


class UpstreamHttpClient(httpx2.AsyncClient):
    """`httpx2.AsyncClient` whose transports (direct and per proxy) are `_Transport`."""

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx2.Limits = _LIMITS,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> httpx2.AsyncBaseTransport:
        if transport is not None:
            return transport
        return _Transport(verify=verify, cert=cert, trust_env=trust_env, limits=limits)

    def _init_proxy_transport(
        self,
        proxy: httpx2.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx2.Limits = _LIMITS,
    ) -> httpx2.AsyncBaseTransport:
        return _Transport(verify=verify, cert=cert, trust_env=trust_env, limits=limits, proxy=proxy)


class _Transport(AiohttpTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        tracker = aiohttp.UploadTracker()
        # A failed attempt sets the future's exception; the request's own error is what
        # is reported, so mark that one as seen.
        tracker.upload_complete.add_done_callback(_consume)
        with _mapped_errors():
            sending = asyncio.ensure_future(
                self.client.request(
                    method=request.method,
                    url=str(request.url),
                    headers=request.headers,
                    data=_body_of(request),
                    allow_redirects=False,
                    auto_decompress=False,
                    compress=False,
                    timeout=aiohttp.ClientTimeout(
                        sock_connect=timeout.get("connect"),
                        sock_read=timeout.get("read"),
                        connect=timeout.get("pool"),
                    ),
                    server_hostname=request.extensions.get("sni_hostname"),
                    proxy=str(self.proxy.url) if self.proxy else None,
                    proxy_auth=aiohttp.BasicAuth(*self.proxy.auth)
                    if self.proxy and self.proxy.auth
                    else None,
                    proxy_headers=self.proxy.headers if self.proxy else None,
                    upload_tracker=tracker,
                )
            )
            try:
                write = timeout.get("write")
                if write is not None:
                    first = write + (timeout.get("connect") or 0.0)
                    await _watch_upload(sending, tracker, first, write)
                response = await sending
            except BaseException:
                sending.cancel()
                if sending.done() and not sending.cancelled() and sending.exception() is None:
                    sending.result().close()
                raise
        body = BodyReader(response)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1", BODY_READER: body}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx2.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=body,
            request=request,
            extensions=extensions,
        )


async def _watch_upload(
    sending: asyncio.Future[aiohttp.ClientResponse],
    tracker: aiohttp.UploadTracker,
    first: float,
    each: float,
) -> None:
    """Returns once the body is sent or the request is over; raises WriteTimeout when no
    byte of the request reached the kernel for `each` seconds (`first` for the first
    stretch, which includes connecting)."""
    written = tracker.bytes_written
    window = first
    while True:
        await asyncio.wait((sending, tracker.upload_complete), timeout=window)
        if sending.done() or tracker.upload_complete.done():
            return
        now = tracker.bytes_written
        if now == written:
            raise httpx2.WriteTimeout(
                f"the upstream took no request bytes for {window:g}s (WRITE_TIMEOUT_SECONDS)"
            )
        written, window = now, each


class BodyReader(httpx2.AsyncByteStream):
    """The response body as it arrives (never waiting to fill a buffer)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def read_some(self) -> bytes:
        """Everything that has arrived and not been read, waiting for at least one byte;
        b"" at the end of the body."""
        with _mapped_errors():
            return await self._response.content.readany()

    def abort(self) -> None:
        """Drops the connection: a pending or later `read_some` raises a transport error."""
        self._response.content.set_exception(aiohttp.ClientConnectionError("read aborted"))
        self._response.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while piece := await self.read_some():
            yield piece

    async def aclose(self) -> None:
        # Back to the pool when read to the end, closed otherwise (aiohttp decides).
        with _mapped_errors():
            self._response.release()
            await self._response.wait_for_close()


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """aiohttp's errors as the httpx2 errors the SDK and the provider understand; the
    aiohttp error stays attached as the cause."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # before aiohttp's other timeouts
        raise httpx2.ConnectTimeout(str(exc) or "connect timed out") from exc
    except aiohttp.ServerTimeoutError as exc:  # sock_read
        raise httpx2.ReadTimeout(str(exc) or "read timed out") from exc
    except (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError) as exc:
        raise httpx2.ProxyError(str(exc)) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx2.ConnectError(str(exc)) from exc
    except (aiohttp.NonHttpUrlClientError, aiohttp.InvalidUrlClientError) as exc:
        raise httpx2.UnsupportedProtocol(str(exc)) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx2.ReadError(str(exc) or type(exc).__name__) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx2.RemoteProtocolError(str(exc) or "server disconnected") from exc
    except aiohttp.ClientOSError as exc:
        raise httpx2.NetworkError(str(exc) or type(exc).__name__) from exc
    except aiohttp.ClientConnectionError as exc:
        raise httpx2.RemoteProtocolError(str(exc) or type(exc).__name__) from exc


def _body_of(request: httpx2.Request) -> bytes | httpx2.AsyncByteStream | None:
    try:
        return request.content or None
    except httpx2.RequestNotRead:  # a streamed body (the SDK sends bytes; uploads may not)
        request.headers.pop("transfer-encoding", None)  # aiohttp frames it itself
        return request.stream  # type: ignore[return-value]


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
