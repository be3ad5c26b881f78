"""`workbench tui --web`: the TUI in a browser through textual-serve, which starts one app process per
open page. textual-serve itself checks nothing about who connects; any web page the user has open could
open a websocket to a local port. So every request must come from the server's own origin and, when it
listens on a loopback address, name a loopback host (no DNS rebinding)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from textual_serve.server import Server

from workbench import launcher

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed(host_header: str, origin: str | None, listen_host: str, port: int) -> bool:
    """Listening on loopback: the Host must be a loopback name with this port (a page on another site
    cannot rebind its name here), and so must the Origin a browser sends. Listening beyond loopback:
    the Origin, when sent, must be this server as the browser reached it."""
    sent = origin.split("://", 1)[-1] if origin is not None else None
    if listen_host in LOOPBACK:
        local = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}
        if port == 80:
            local |= {"127.0.0.1", "localhost", "[::1]"}
        return host_header in local and (sent is None or sent in local)
    return sent is None or sent in (host_header, f"{listen_host}:{port}")


class GuardedServer(Server):
    async def _make_app(self) -> web.Application:
        app = await super()._make_app()

        @web.middleware
        async def same_origin(request: web.Request, handler: Any) -> web.StreamResponse:
            if not allowed(request.host, request.headers.get("Origin"), self.host, self.port):
                raise web.HTTPForbidden(text="workbench: requests must come from this server's own page")
            return await handler(request)

        app.middlewares.append(same_origin)
        return app


def serve(home: Path, host: str, port: int) -> None:
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach it can start and cancel runs", file=sys.stderr)
    command = shlex.join([*launcher.CLI, "--home", str(home.resolve()), "tui"])
    shown = f"[{host}]" if ":" in host else host
    print(f"workbench TUI at http://{shown}:{port} (Ctrl-C stops the server; runs keep going)", flush=True)
    GuardedServer(command, host=host, port=port, title="workbench").serve()
