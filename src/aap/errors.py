"""Error types that carry their HTTP status.

``TerminalError``: the request is wrong and retrying it unchanged will fail again.
``TransientError``: the request may succeed later; the answer carries Retry-After.
"""

from __future__ import annotations

import re
from typing import Any


class AAPError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, detail: Any = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail if detail is not None else message
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail}


class TerminalError(AAPError):
    """Retrying the same request will not help."""


class TransientError(AAPError):
    """The request may succeed later."""

    def __init__(self, message: str, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class BadRequest(TerminalError):
    status = 400
    code = "bad_request"


class Unauthorized(TerminalError):
    status = 401
    code = "unauthorized"


class Forbidden(TerminalError):
    status = 403
    code = "forbidden"


class NotFound(TerminalError):
    status = 404
    code = "not_found"


class Conflict(TerminalError):
    status = 409
    code = "conflict"


class MethodNotAllowed(TerminalError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(TerminalError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(TerminalError):
    status = 413
    code = "payload_too_large"


class UpgradeRequired(TerminalError):
    """A WebSocket endpoint asked for over plain HTTP."""

    status = 426
    code = "upgrade_required"


class TooManyRequests(TransientError):
    status = 429
    code = "rate_limited"


class ServiceUnavailable(TransientError):
    status = 503
    code = "unavailable"


_PLAIN_PATH = re.compile(r"[A-Za-z0-9/_.~-]{0,100}")


def shown(path: str) -> str:
    """The path as an error message may name it: only when it is short and plain (no
    markup, no long strings reflected back), else ``this path``."""
    return path if _PLAIN_PATH.fullmatch(path) else "this path"


def no_endpoint(path: str) -> NotFound:
    """404 for a path nothing answers."""
    return NotFound(f"no endpoint at {shown(path)}")


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a log line about an expected failure (a
    server out of reach) that needs no traceback."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
