"""`workbench chat`: one prompt answered by a run's variants (and its running servers), one after another."""

from __future__ import annotations

import argparse

from workbench.cli.common import Subcommands, _out, _positive, _run_name, _store
from workbench.core.errors import RunError


def cmd_chat(args: argparse.Namespace) -> int:
    from workbench.pipeline import candidates as chat

    store = _store(args)
    found, system_prompt = chat.for_run(store, args.run)
    found += chat.served(store, args.run)  # its running servers answer over HTTP (`served:<server>`)
    chosen = chat.pick(found, args.variant) if args.variant else found
    if not chosen:
        raise RunError(f"run {args.run!r} has no finished variants to ask yet")
    conversation = chat.messages(args.prompt, system_prompt)
    failed = 0
    for candidate in chosen:  # one at a time: each gets the machine to itself, so tok/s compare
        label, name = candidate.label, candidate.name
        _out(f"── {name if label == name else f'{label}: {name}'} ({candidate.format})", flush=True)
        for event in chat.ask(candidate, conversation, args.max_tokens):
            if "text" in event:
                _out(event["text"], end="", flush=True)
            elif "done" in event:
                _out(f"\n   {chat.stats_line(event['done'])}\n", flush=True)
            elif "error" in event:
                _out(f"   FAILED: {event['error']}\n", flush=True)
                failed += 1
    return 1 if failed else 0


def register(sub: Subcommands) -> None:
    chat_parser = sub.add_parser("chat", help="one prompt answered by a run's variants, with tok/s each")
    chat_parser.add_argument("run", type=_run_name)
    chat_parser.add_argument("prompt")
    chat_parser.add_argument(
        "--variant", action="append", default=[], help="a variant's name or part of it (repeatable; default: all)"
    )
    chat_parser.add_argument("--max-tokens", type=_positive, default=128, help="per answer")
    chat_parser.set_defaults(func=cmd_chat)
