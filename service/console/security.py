"""The console's web security: the session cookie, CSRF tokens, the cross-origin check and response headers.

- **Session cookie** ``sealmem_console``: an opaque random token (the session itself is in SQL,
  :mod:`memory_store.console_sessions`), ``HttpOnly``, ``SameSite=Strict``, ``Path=/admin``, ``Secure`` on HTTPS
  (or always, by setting). It never holds the API key.
- **CSRF token**: a keyed digest of the session token (:meth:`MemoryStore.pseudonym`), so it is tied to the
  session, different for every session, and needs no storage. Every state-changing form carries it in the field
  ``csrf_token``. The sign-in form, before there is a session, carries the digest of a random nonce held in a
  short-lived cookie of its own (login CSRF).
- **Cross-origin check** on every unsafe request, sign-in included (as datasette's
  ``CrossOriginProtectionMiddleware``): ``Sec-Fetch-Site`` must be ``same-origin`` or ``none``; without it, an
  ``Origin`` header must equal the request's own scheme, host and port; a request with neither is not from a
  browser and passes this check (it still needs the CSRF token).
- **Headers** on every console response: a Content-Security-Policy with no inline script or style,
  ``X-Frame-Options: DENY``, ``Cache-Control: no-store``, ``Referrer-Policy: same-origin``, ``nosniff``.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError
from service.services import Services

SESSION_COOKIE = "sealmem_console"
LOGIN_COOKIE = "sealmem_console_login"
COOKIE_PATH = "/admin"
CSRF_FIELD = "csrf_token"
LOGIN_NONCE_SECONDS = 600

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CrossOriginRefused(ApiError):
    def __init__(self) -> None:
        super().__init__(403, "cross-origin request refused", code="forbidden")


class CsrfRefused(ApiError):
    def __init__(self) -> None:
        super().__init__(403, "missing or invalid CSRF token: reload the page and try again", code="forbidden")


class StaticHeaders:
    """ASGI wrapper of the console's static files: every response gets the console's headers except
    ``Cache-Control`` (the vendored script and stylesheet may be cached), so ``nosniff`` and the CSP cover them too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name != "Cache-Control":
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def apply_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers[name] = value
    return response


def check_origin(request: Request) -> None:
    """Refuse an unsafe request a browser sent from another origin (see the module docstring)."""
    if request.method in _SAFE_METHODS:
        return
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            raise CrossOriginRefused()
        return
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin.lower() != own.lower():
        raise CrossOriginRefused()


def csrf_token(services: Services, session_token: str) -> str:
    """The CSRF token of the session whose cookie holds ``session_token``."""
    return services.store.pseudonym("console-csrf", session_token)


def check_csrf(services: Services, session_token: str, offered: str | None) -> None:
    if not offered or not hmac.compare_digest(offered.encode(), csrf_token(services, session_token).encode()):
        raise CsrfRefused()


def new_login_nonce() -> str:
    return secrets.token_urlsafe(32)


def login_csrf_token(services: Services, nonce: str) -> str:
    return services.store.pseudonym("console-login", nonce)


def check_login_csrf(services: Services, nonce: str | None, offered: str | None) -> None:
    if not nonce or not offered or len(nonce) > 64:
        raise CsrfRefused()
    if not hmac.compare_digest(offered.encode(), login_csrf_token(services, nonce).encode()):
        raise CsrfRefused()


def secure_cookie(services: Services, request: Request) -> bool:
    return services.settings.console_secure_cookie == "always" or request.url.scheme == "https"


def set_cookie(services: Services, request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure_cookie(services, request),
    )


def clear_cookie(services: Services, request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure_cookie(services, request)
    )
