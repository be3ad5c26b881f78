"""What transformers' generate() imports and runs when a task's generation_kwargs name this folder."""

from pathlib import Path

Path("$MARKERS/$ENTRY-custom_generate").touch()


def generate(model, *args, **kwargs):
    raise SystemExit(71)
