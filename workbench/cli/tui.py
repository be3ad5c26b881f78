"""`workbench tui` (also `workbench` with no arguments): the terminal UI, or served to a browser."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli.common import Subcommands, _out, _positive

TOKEN_IN_PS = (
    "--token is in this process's command line, which every local user can read (`ps`);"
    " put it in ${} or a --token-file (mode 0600) instead"
)


def cmd_tui(args: argparse.Namespace) -> int:
    if getattr(args, "web", False):
        from workbench.tui import web

        if args.token is not None:
            _out(f"warning: {TOKEN_IN_PS.format(web.TOKEN_ENV)}", file=sys.stderr)
        web.serve(args.home, args.host, args.port, args.token, args.allow_host, args.max_sessions, args.token_file)
        return 0
    from workbench.tui.app import WorkbenchApp

    WorkbenchApp(args.home).run()
    return 0


def register(sub: Subcommands) -> None:
    tui = sub.add_parser("tui", help="the terminal UI (also `workbench` with no arguments)")
    tui.add_argument("--web", action="store_true", help="serve it to a browser (textual-serve) instead")
    tui.add_argument("--host", default="127.0.0.1", help="--web: address to listen on (default: this machine only)")
    tui.add_argument("--port", type=int, default=8000, help="--web: port (default 8000)")
    secret = tui.add_mutually_exclusive_group()
    secret.add_argument(
        "--token-file", type=Path, metavar="FILE", help="--web: read the access token from FILE (mode 0600)"
    )
    secret.add_argument(
        "--token", help="--web: the access token (other local users see it in `ps`: prefer $WORKBENCH_WEB_TOKEN,"
        " else a random one, printed, or --token-file)"
    )  # fmt: skip
    tui.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME", help="--web: another name browsers use for it"
    )
    tui.add_argument("--max-sessions", type=_positive, default=4, help="--web: app processes at once (default 4)")
    tui.set_defaults(func=cmd_tui)
