"""How the scheduler's HTTP surfaces say an error: each has its own error model (the
Iceberg REST spec's, the console's), one way of mapping faas's errors onto it.

An :class:`ErrorModel` names, for the first faas error class that matches, the HTTP status
and the kind its body carries ("" for the error's own class name), and how a body is
written. :func:`answer` runs a handler and says whatever it raises in that model: an
unknown endpoint as ``NotFound`` would be, a method not served with ``InvalidInput``'s kind
and status 405, a fault of ours as ``FaasError`` (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from faas.protocol.errors import FaasError, InvalidInput, NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorModel:
    """One surface's way of saying errors (``name``: for logs; ``endpoints``: appended to
    the message for an unknown endpoint, to say where they are listed)."""

    name: str
    respond: Callable[[int, str, str], web.Response]
    statuses: list[tuple[type[FaasError], int, str]]
    endpoints: str = ""

    def status(self, exc: FaasError) -> tuple[int, str]:
        status, kind = next((s, k) for cls, s, k in self.statuses if isinstance(exc, cls))
        return status, kind or type(exc).__name__

    def error(self, exc: FaasError, status: int | None = None) -> web.Response:
        found, kind = self.status(exc)
        return self.respond(status or found, kind, str(exc))


async def answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    model: ErrorModel, passthrough: Callable[[Exception], tuple[int, str] | None] | None = None,
) -> web.StreamResponse:
    """``handler``'s response, or what it raised in ``model`` (``passthrough``: errors
    that already carry their status and kind)."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return model.error(NotFound(f"no such endpoint: {request.method} {request.path}"
                                    f"{model.endpoints}"))
    except web.HTTPMethodNotAllowed:
        return model.error(InvalidInput(f"{request.method} is not served at {request.path}"),
                           status=405)
    except web.HTTPException:
        raise
    except FaasError as exc:
        return model.error(exc)
    except Exception as exc:  # noqa: BLE001 - a fault of ours: logged, one line to the client
        carried: Any = passthrough(exc) if passthrough is not None else None
        if carried is not None:
            return model.respond(carried[0], carried[1], str(exc))
        log.exception("%s %s %s failed", model.name, request.method, request.path)
        return model.error(FaasError(f"the scheduler failed on {request.method} "
                                     f"{request.path}: {type(exc).__name__}: {exc}"))
