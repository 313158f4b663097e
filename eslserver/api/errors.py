"""HTTP API errors: a status, a stable code and a human detail, always as JSON.

Every error response body is ``{"error": "stable_code", "detail": "human text"}``, plus
``"field"`` when one input field is at fault (the detail then names the field and the value),
and a few route-specific keys documented in the OpenAPI document (``line`` and ``kind`` for a
template error; ``accepted`` and ``errors`` for a rejected price batch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "bad_input", "not_found", "conflict"]


class ApiError(Exception):
    """An error the API answers with `status` and a JSON body (raised by handlers)."""

    def __init__(self, status: int, code: str, detail: str, *, field: str | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                 close_connection: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        self.close_connection = close_connection
        """Close the connection after answering (the request body was not read)."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def bad_input(field: str, value: object, expected: str, *, code: str = "invalid_parameter") -> ApiError:
    """400: ``field: expected …, got 'value'``."""
    return ApiError(400, code, f"{field}: expected {expected}, got {_show(value)}", field=field)


def not_found(code: str, detail: str, *, field: str | None = None) -> ApiError:
    return ApiError(404, code, detail, field=field)


def conflict(code: str, detail: str, *, field: str | None = None) -> ApiError:
    return ApiError(409, code, detail, field=field)
