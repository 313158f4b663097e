"""A small, synchronous client of the eslserver HTTP API (what ``esl`` tech commands use).

    client = Client("http://127.0.0.1:8080", token)
    label = client.label("aa:bb:cc:dd:ee:ff")          # JSON of GET /api/v1/labels/{mac}
    client.bind(label["mac"], "5901234123457")
    for item in client.labels(state="offline"): ...    # every page, lazily

Synchronous on purpose: a command line does one thing after another, and the standard
library's `http.client` keeps one connection open across calls (a scan loop or an import in
chunks is not a TCP handshake per request). The client never interprets the data beyond
what a call needs; bodies come back as the API's JSON.

Errors: an answer with an error status raises `ApiError(code, detail, status)` built from the
API's ``{"error", "detail"}`` body (any other body still gives an `ApiError`, code
``http_<status>``); a server that cannot be reached, or answers with something that is not
HTTP/JSON, raises `ClientError`. Both say which URL was asked.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Self
from urllib.parse import quote, urlencode, urlsplit

__all__ = ["Client", "ClientError", "ApiError", "Json", "DEFAULT_SERVER", "PAGE_SIZE"]

Json = dict[str, Any]
"""A JSON object as the API answers it."""

DEFAULT_SERVER: Final = "http://127.0.0.1:8080"
PAGE_SIZE: Final = 1000
"""Labels fetched per request when listing (the API's maximum page)."""

_RETRYABLE: Final = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                     http.client.CannotSendRequest)


class ClientError(Exception):
    """The server could not be asked, or its answer could not be read."""


class ApiError(ClientError):
    """The API answered with an error: its stable `code`, the human `detail`, the HTTP `status`
    and, when one input field is at fault, `field`; `body` is the whole JSON error body."""

    def __init__(self, code: str, detail: str, status: int, *, field: str | None = None,
                 body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{detail} ({code}, HTTP {status})")
        self.code = code
        self.detail = detail
        self.status = status
        self.field = field
        self.body: Json = dict(body or {})


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _segment(value: str) -> str:
    return quote(value, safe="")


_CHAIN_PATHS = ("/api/v1/me", "/api/v1/templates", "/api/v1/audit", "/api/v1/events/stream", "/api/v1/openapi.json")
"""What belongs to the whole chain, not to one store (never under ``/api/v1/stores/{store}/``)."""


class Client:
    """One API server and token. Not thread-safe (one connection); cheap to create."""

    def __init__(self, base_url: str = DEFAULT_SERVER, token: str | None = None, *, timeout: float = 30.0,
                 store: str | None = None) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"server: expected a URL such as {DEFAULT_SERVER}, got {base_url!r}")
        if parts.query or parts.fragment:
            raise ClientError(f"server: expected a URL without query or fragment, got {base_url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ClientError(f"server: the port in {base_url!r} is not a number 0-65535") from None
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.token = token
        self.timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self.store = store
        """A store of the chain: its routes are called under ``/api/v1/stores/{store}/…`` (None:
        the server's configured store, on the plain paths)."""

    # -- transport ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        if self._conn is not None:
            return self._conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn, False

    def request(self, method: str, path: str, *, params: Mapping[str, object] | None = None,
                body: object = None) -> Any:
        """One call: `path` below the base URL (``/api/v1/…``), `params` as the query (None
        values left out, booleans as true/false), `body` sent as JSON. The decoded JSON answer,
        or `ApiError` / `ClientError`."""
        query = {k: ("true" if v is True else "false" if v is False else str(v))
                 for k, v in (params or {}).items() if v is not None}
        if self.store is not None and path.startswith("/api/v1/") and not path.startswith(_CHAIN_PATHS):
            path = f"/api/v1/stores/{_segment(self.store)}/" + path[len("/api/v1/"):]
        target = self._prefix + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": "esl-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, default=_json_default, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        url = self.base_url + path
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except _RETRYABLE as exc:
                self.close()
                if reused and attempt == 1:  # the server closed an idle keep-alive connection
                    continue
                raise ClientError(f"{method} {url}: connection lost ({exc or type(exc).__name__})") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
                if isinstance(exc, socket.timeout):
                    reason = f"no answer within {self.timeout:g} s"
                raise ClientError(f"cannot reach {self.base_url}: {reason}") from None
            if response.will_close:
                self.close()
            return self._decode(method, url, response.status, response.getheader("Content-Type") or "", payload)
        raise AssertionError("unreachable")

    @staticmethod
    def _decode(method: str, url: str, status: int, content_type: str, payload: bytes) -> Any:
        value: Any = None
        is_json = content_type.split(";")[0].strip().lower() == "application/json"
        if is_json:
            try:
                value = json.loads(payload.decode("utf-8"), parse_float=Decimal)
            except (UnicodeDecodeError, ValueError):
                raise ClientError(f"{method} {url}: HTTP {status} with a body that is not JSON") from None
        if status >= 400:
            if isinstance(value, dict) and isinstance(value.get("error"), str):
                field = value.get("field")
                raise ApiError(value["error"], str(value.get("detail", "")), status,
                               field=field if isinstance(field, str) else None, body=value)
            text = payload[:200].decode("utf-8", "replace").strip()
            raise ApiError(f"http_{status}", text or f"HTTP {status} from {method} {url}", status)
        if not is_json:
            raise ClientError(f"{method} {url}: expected JSON, got {content_type or 'no content type'!r}")
        return value

    # -- the API -----------------------------------------------------------------------------
    def me(self) -> Json:
        """Who the token is (``{name, role}``)."""
        result: Json = self.request("GET", "/api/v1/me")
        return result

    def labels(self, **filters: object) -> Iterator[Json]:
        """Every label matching `filters` (the query parameters of ``GET /labels``: state,
        gateway, sku, battery_below, stale, paired …), fetching page after page."""
        offset = 0
        while True:
            page = self.request("GET", "/api/v1/labels", params={**filters, "limit": PAGE_SIZE, "offset": offset})
            items: list[Json] = page["items"]
            yield from items
            offset += len(items)
            if not items or offset >= int(page["total"]):
                return

    def label(self, mac: str) -> Json:
        result: Json = self.request("GET", f"/api/v1/labels/{_segment(mac)}")
        return result

    def label_events(self, mac: str, *, limit: int = 20) -> list[Json]:
        """The label's newest events (acks, nacks, discovery…), newest first."""
        page = self.request("GET", f"/api/v1/labels/{_segment(mac)}/events", params={"limit": limit})
        items: list[Json] = page["items"]
        return items

    def label_history(self, mac: str, *, limit: int = 20) -> list[Json]:
        """Who bound, unbound or flashed the label, newest first."""
        page = self.request("GET", f"/api/v1/labels/{_segment(mac)}/history", params={"limit": limit})
        items: list[Json] = page["items"]
        return items

    def bind(self, mac: str, sku: str, *, template: str | None = None, model: str | None = None) -> Json:
        """Show product `sku` on label `mac` (the server pairs the label first if needed)."""
        body: Json = {"sku": sku}
        if template is not None:
            body["template"] = template
        if model is not None:
            body["model"] = model
        result: Json = self.request("PUT", f"/api/v1/labels/{_segment(mac)}/binding", body=body)
        return result

    def unbind(self, mac: str) -> Json:
        result: Json = self.request("DELETE", f"/api/v1/labels/{_segment(mac)}/binding")
        return result

    def flash(self, mac: str, seconds: int) -> Json:
        """Queue an LED flash; ``{job, mac, seconds}``."""
        result: Json = self.request("POST", f"/api/v1/labels/{_segment(mac)}/flash", body={"seconds": seconds})
        return result

    def reset(self, mac: str) -> Json:
        """Pair again a label that lost its key (forget its key, pair it with its factory key)."""
        result: Json = self.request("POST", f"/api/v1/labels/{_segment(mac)}/reset")
        return result

    def jobs(self, **filters: object) -> list[Json]:
        page = self.request("GET", "/api/v1/jobs", params=filters)
        items: list[Json] = page["items"]
        return items

    def gateways(self) -> list[Json]:
        page = self.request("GET", "/api/v1/gateways")
        items: list[Json] = page["items"]
        return items

    def products(self, q: str | None = None, *, limit: int = 50) -> list[Json]:
        """Catalogue search: SKU or name substring, or an exact EAN; exact matches first."""
        page = self.request("GET", "/api/v1/products", params={"q": q, "limit": limit})
        items: list[Json] = page["items"]
        return items

    def product(self, sku: str, *, history: int = 0) -> Json:
        result: Json = self.request("GET", f"/api/v1/products/{_segment(sku)}", params={"history": history})
        return result

    def submit_prices(self, updates: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Json:
        """``POST /prices``: ``{accepted, errors}`` (a 400 when every item was rejected)."""
        result: Json = self.request("POST", "/api/v1/prices", body=updates)
        return result

    def import_history(self, updates: Sequence[Mapping[str, Any]]) -> Json:
        """``POST /prices/history`` (admin): past prices, each with its ``valid_from``."""
        result: Json = self.request("POST", "/api/v1/prices/history", body=list(updates))
        return result

    def reset_seq(self, sku: str) -> Json:
        """``POST /products/{sku}/seq-reset`` (admin): forget the SKU's POS seq."""
        result: Json = self.request("POST", f"/api/v1/products/{_segment(sku)}/seq-reset")
        return result

    def import_rows(self, rows: Sequence[Mapping[str, Any]]) -> Json:
        """``POST /import``: catalogue rows with optional bindings; ``{results, errors}``."""
        result: Json = self.request("POST", "/api/v1/import", body={"rows": list(rows)})
        return result
