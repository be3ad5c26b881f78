"""`workbench tui --web`: the TUI in a browser through textual-serve, which starts one app process per
open page. The app starts and cancels runs, so it is guarded as Jupyter guards a notebook server, since
textual-serve itself checks nothing about who connects:

- a token: random unless given (WORKBENCH_WEB_TOKEN, `--token-file` or `--token`); the printed address
  carries it, the first visit trades it for a session cookie; every request without one is refused (401).
  The cookie holds a random value of this server's own, never the token: a browser sends a 127.0.0.1
  cookie to every port there, so another local server would otherwise receive the token;
- the Host header must name this machine (every loopback form, the listening address, this machine's
  names and addresses, `--allow-host`): a page on another site cannot rebind its name to this server;
- the Origin a browser sends must be the page's own (scheme://Host), so no other site's page can open
  the websocket;
- at most `--max-sessions` app processes at once.
The page's websocket address is built from the Host the browser used, so an SSH tunnel may use any port.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import shlex
import socket
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.server import Server

from workbench.core.errors import InputError
from workbench.pipeline import launcher

TOKEN_ENV = "WORKBENCH_WEB_TOKEN"
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_FILE_BYTES = 4096
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (in any spelling) or a loopback name."""
    name = host.strip("[]").lower().rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """`Host` without its port, lower case, IPv6 brackets removed."""
    return (urlsplit(f"//{host_header}").hostname or "").rstrip(".")


def this_machine(listen_host: str) -> set[str]:
    """Names and addresses this machine answers to, for a server listening beyond loopback."""
    import psutil

    names = {listen_host.lower(), socket.gethostname().lower(), socket.getfqdn().lower()}
    for addresses in psutil.net_if_addrs().values():
        inet = (a for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6))
        names.update(a.address.split("%")[0].lower() for a in inet)
    return {name for name in names if name and name not in ("0.0.0.0", "::")}


@dataclass
class Guard:
    token: str
    cookie: str
    hosts: set[str] = field(default_factory=set)  # allowed besides loopback
    session: str = field(default_factory=lambda: secrets.token_urlsafe(32))  # the cookie's value

    def host_ok(self, host_header: str) -> bool:
        name = host_name(host_header)
        return bool(name) and (is_loopback(name) or name in self.hosts)

    def origin_ok(self, origin: str | None, host_header: str) -> bool:
        """A browser names the page a request comes from; it must be this server's own page (the scheme
        is not compared: behind a TLS proxy the page is https and the request here http)."""
        return origin is None or urlsplit(origin).netloc.lower() == host_header.lower()

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def admits(self, request: web.Request) -> bool:
        """The token in an `Authorization: token ...` header, or this server's session cookie."""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("token "):
            return self.token_ok(header[6:].strip())
        cookie = request.cookies.get(self.cookie)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())


class GuardedServer(Server):
    def __init__(self, command: str, guard: Guard, max_sessions: int, **options: Any):
        super().__init__(command, **options)
        self.guard = guard
        self.max_sessions = max_sessions
        self.sessions = 0

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        guard = self.guard

        @web.middleware
        async def guarded(request: web.Request, handler: Any) -> web.StreamResponse:
            if not guard.host_ok(request.host):
                raise web.HTTPForbidden(
                    text=f"workbench: unknown Host {request.host!r}; start the server with --allow-host NAME"
                )
            if not guard.origin_ok(request.headers.get("Origin"), request.host):
                raise web.HTTPForbidden(text="workbench: requests must come from this server's own page")
            offered = request.query.get("token")
            if offered is not None and guard.token_ok(offered):  # first visit: trade the token for a cookie
                rest = {key: value for key, value in request.query.items() if key != "token"}
                found = web.HTTPFound(request.rel_url.with_query(rest))
                found.set_cookie(guard.cookie, guard.session, httponly=True, samesite="Strict", path="/")
                return found
            if not guard.admits(request):
                raise web.HTTPUnauthorized(
                    text="workbench: open the address `workbench tui --web` printed (it carries ?token=...)"
                )
            response = await handler(request)
            response.headers.setdefault("X-Frame-Options", "DENY")  # no framing by another page
            response.headers.setdefault("Referrer-Policy", "no-referrer")
            return response

        app.middlewares.append(guarded)
        return app

    async def handle_index(self, request: web.Request) -> Any:
        # the page's websocket address from the Host the browser used (allow-listed above): right through
        # a tunnel or a name, where textual-serve would use the listening address (0.0.0.0 is no address)
        self.public_url = f"{request.scheme}://{request.host}"
        return await super().handle_index(request)

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        if self.sessions >= self.max_sessions:
            raise web.HTTPServiceUnavailable(text=f"workbench: {self.max_sessions} sessions already open")
        self.sessions += 1
        try:
            return await super().handle_websocket(request)
        finally:
            self.sessions -= 1


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped), refused unless only its owner may read it."""
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise InputError(
                    f"--token-file {path}: mode {mode:04o} lets other users read the token; `chmod 600 {path}`"
                )
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"--token-file {path}: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise InputError(f"--token-file {path}: over {MAX_TOKEN_FILE_BYTES} bytes; expected one token")
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise InputError(f"--token-file {path}: not UTF-8 text") from None


def resolve_token(given: str | None, token_file: Path | None = None) -> tuple[str, bool]:
    """The token to require (from `token_file`, `given` or WORKBENCH_WEB_TOKEN) and whether it was
    generated here."""
    token = read_token_file(token_file) if token_file is not None else given
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    if token is None:
        return secrets.token_urlsafe(32), True
    if len(token) < MIN_TOKEN_LENGTH or len(set(token)) < MIN_TOKEN_LENGTH // 2:
        raise InputError(
            f"--token / --token-file / {TOKEN_ENV}: at least {MIN_TOKEN_LENGTH} characters,"
            f" {MIN_TOKEN_LENGTH // 2} of them different (anyone who guesses it gets the app); leave it unset for"
            " a random one"
        )
    return token, False


def serve(
    home: Path,
    host: str,
    port: int,
    token: str | None = None,
    allow_hosts: list[str] | None = None,
    max_sessions: int = 4,
    token_file: Path | None = None,
) -> None:
    token, generated = resolve_token(token, token_file)
    hosts = {name.lower() for name in allow_hosts or []}
    if not is_loopback(host):
        hosts |= this_machine(host)
        print(
            f"warning: listening on {host}: whoever has the token can start and cancel runs, and plain http "
            "shows it to the network; prefer an SSH tunnel (ssh -L 8000:127.0.0.1:8000) or a TLS proxy",
            file=sys.stderr,
        )
    guard = Guard(token=token, cookie=f"workbench-session-{port}", hosts=hosts)  # per port: one per server
    command = shlex.join([*launcher.CLI, "--home", str(home.resolve()), "tui"])
    shown = f"[{host}]" if ":" in host else host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else shown
    query = f"?token={token}" if generated else f"?token=<the token from {TOKEN_ENV}, --token-file or --token>"
    print(f"workbench TUI at http://{shown}:{port}/{query}", flush=True)
    print("(Ctrl-C stops the server; runs keep going)", flush=True)
    GuardedServer(command, guard, max_sessions, host=host, port=port, title="workbench").serve()
