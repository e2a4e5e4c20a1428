"""Who may ask this server for anything, checked before any work, on every route: the name the
request was sent to (Host), the web page it came from (Origin), and its API key.

- **Host.** A request whose Host is neither an IP address, a name for this machine (`localhost`, its
  hostname) nor one of `MUSICGEN_ALLOWED_HOSTS` is refused: that is what a page does whose name was
  made to resolve to this machine (DNS rebinding), and what no legitimate client does.
- **Origin.** A browser names the page a request comes from. A request whose Origin is neither the
  server's own nor one of `MUSICGEN_CORS_ORIGINS` is refused, whatever its method or body (a
  cross-site `multipart/form-data` post needs no preflight); listed origins get CORS headers and
  their preflights answered (Starlette's `CORSMiddleware`).
- **Key.** With `MUSICGEN_API_KEYS_FILE` set, every route but the public ones (`Endpoint.public`,
  BentoML's probes, `/metrics` unless `MUSICGEN_PROTECT_METRICS`) needs `Authorization: Bearer
  <key>`. The key's name rides along with the request (`request.state.api_key`) for limits, logs and
  metrics; the secret is never logged.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware

from ..access.keys import KEY_IN_SCOPE, ApiKey, KeysFile
from ..errors import MusicGenError, NotAllowedHere, Unauthorized
from ..settings import Settings
from .endpoints import ENDPOINTS
from .errors import error_response
from .middleware import log_refusal

# BentoML's own routes that a key does not guard: probes (they tell nothing) and the API page's
# static files (the page asks for the document with the key the person gives it).
_PUBLIC_BENTOML_PATHS = {"/livez", "/readyz", "/healthz", "/"}
_PUBLIC_BENTOML_PREFIXES = ("/static_content/",)
# What a browser may send and read across origins, for the listed origins.
_CORS_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID"]
_EXPOSED_HEADERS = ["Location", "Retry-After", "X-Audio-Path", "X-Seed", "X-Sample-Rate", "X-Channels", "X-Duration-S"]


def _public_routes(settings: Settings) -> set[tuple[str, str]]:
    """(method, path template) of every declared route that needs no key."""
    public: set[tuple[str, str]] = {(endpoint.method, endpoint.path) for endpoint in ENDPOINTS if endpoint.public}
    if not settings.protect_metrics:
        public.add(("GET", "/metrics"))
    return public


def _is_public(method: str, path: str, public: set[tuple[str, str]]) -> bool:
    if method in ("GET", "HEAD") and (path in _PUBLIC_BENTOML_PATHS or path.startswith(_PUBLIC_BENTOML_PREFIXES)):
        return True
    if (method if method != "HEAD" else "GET", path) in public:
        return True
    # The playground's files: the one templated public route.
    return method in ("GET", "HEAD") and path.startswith("/playground/") and ("GET", "/playground/{asset}") in public


class Guard:
    """ASGI middleware: Host, Origin and key checks around the service, before any of its work."""

    def __init__(self, app: Any, settings: Settings, keys: KeysFile | None) -> None:
        self.settings = settings
        self.keys = keys
        self.public = _public_routes(settings)
        self.names = _names_of_this_machine()
        self.app = CORSMiddleware(
            app,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=_CORS_HEADERS,
            expose_headers=_EXPOSED_HEADERS,
            max_age=600,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            self._check_host(headers.get("host"))
            self._check_origin(headers.get("origin"), headers.get("host"))
            if scope["method"] != "OPTIONS":  # a preflight carries no credentials
                key = self._check_key(scope["method"], scope["path"], headers.get("authorization"))
                scope.setdefault("state", {})[KEY_IN_SCOPE] = key
        except MusicGenError as refusal:
            log_refusal(scope, refusal.status_code, refusal.body())
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_host(self, host: str | None) -> None:
        if host is None:  # HTTP/1.0 without a Host: no name to have been rebound
            return
        name = _hostname(host)
        if name is None or _allowed_name(name, self.names, self.settings.allowed_hosts):
            return
        raise NotAllowedHere(
            f"this server does not answer to the name {name[:100]!r}: add it to MUSICGEN_ALLOWED_HOSTS, or send the "
            "request to its address or its own name",
            field="Host",
        )

    def _check_origin(self, origin: str | None, host: str | None) -> None:
        if origin is None:
            return
        parts = urlsplit(origin)
        own = host is not None and parts.scheme in ("http", "https") and _same_netloc(parts, host)
        listed = "*" in self.settings.cors_origins or origin.rstrip("/") in self.settings.cors_origins
        if own or listed:
            return
        raise NotAllowedHere(
            f"pages from {origin[:100]!r} may not call this server: list the origin in MUSICGEN_CORS_ORIGINS to "
            "allow them",
            field="Origin",
        )

    def _check_key(self, method: str, path: str, authorization: str | None) -> ApiKey | None:
        if self.keys is None or _is_public(method, path, self.public):
            return None
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized(
                "this server needs an API key: send 'Authorization: Bearer <key>' (musicgen-bento keys add NAME "
                "makes one)",
                presented=False,
            )
        key = self.keys.find(secret.strip())
        if key is None:
            raise Unauthorized("the API key is not one this server knows (removed, or mistyped)", presented=True)
        return key


def bound_address(argv: list[str]) -> str | None:
    """The address this BentoML worker listens on: its listening socket is handed over as `--fd N`
    (`bentoml serve --host` is not told to the worker otherwise). None where that is not known."""
    if "--fd" not in argv[:-1]:
        return None
    try:
        with socket.socket(fileno=os.dup(int(argv[argv.index("--fd") + 1]))) as listening:
            return str(listening.getsockname()[0])
    except (OSError, ValueError):
        return None


def _names_of_this_machine() -> set[str]:
    names = {"localhost", "localhost.localdomain"}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower().rstrip("."))
    return names


def _hostname(host: str) -> str | None:
    """The name in a Host header (no port, lower case), or None when it is an IP address."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:3000
        return None if "]" in host else host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return name.rstrip(".")


def _allowed_name(name: str, own: set[str], allowed: tuple[str, ...]) -> bool:
    if name in own or name in allowed or "*" in allowed:
        return True
    return any(pattern.startswith("*.") and name.endswith(pattern[1:]) for pattern in allowed)


def _same_netloc(origin: Any, host: str) -> bool:
    """Whether an Origin's host and port are the Host's (a scheme's default port being absent)."""
    default = {"http": 80, "https": 443}[origin.scheme]
    try:
        origin_port = origin.port or default
    except ValueError:
        return False
    shown = urlsplit(f"{origin.scheme}://{host.strip()}")
    try:
        host_port = shown.port or default
    except ValueError:
        return False
    return (origin.hostname or "") == (shown.hostname or "") and origin_port == host_port
