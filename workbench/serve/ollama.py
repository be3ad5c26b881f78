"""What llama.cpp and Ollama users need next to a GGUF: an Ollama `Modelfile` and the `llama-server`
command line.

Ollama does not run the Jinja chat template stored in a GGUF; a Modelfile's TEMPLATE, in Go's template
language, replaces it. A wrong TEMPLATE or a missing stop is what makes an imported fine-tune ramble or
answer as the base model would. So the training template is translated only when it is known to be
faithful: the template is rendered on probe conversations (with and without a system turn, several
turns, awkward content) and must equal, character for character, the rendering of a family the workbench
has a Go template for. Anything else is reported as not translatable, with the first conversation that
differs, and no Modelfile is written.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Messages = list[dict[str, str]]
Render = Callable[[Messages], str]  # the training chat template, with the generation prompt

PROBES: list[Messages] = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    [{"role": "user", "content": '  spaced\nlines {{ braces }} "quoted" <b> \\ end  '}],
]


@dataclass
class Translation:
    family: str | None  # e.g. chatml; None: not translatable
    template: str | None  # the Go template for the Modelfile
    reason: str | None = None  # why there is none


def render_chatml(messages: Messages, default_system: str | None) -> str:
    text = ""
    if default_system is not None and messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{default_system}<|im_end|>\n"
    for message in messages:
        text += f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def ollama_chatml(default_system: str | None) -> str:
    turns = "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    if default_system is not None:  # Ollama puts the Modelfile's SYSTEM first; without one, the template's
        first = '{{- if and (eq $i 0) (ne .Role "system") }}'
        turns = first + "<|im_start|>system\n" + default_system + "<|im_end|>\n{{ end }}" + turns
    return "{{- range $i, $_ := .Messages }}\n" + turns + "{{ end }}<|im_start|>assistant\n"


def chatml_default_system(render: Render) -> str | None:
    """The system prompt a ChatML template adds when a conversation has none (SmolLM2 and Qwen do)."""
    found = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n", render(PROBES[0]), re.S)
    return found.group(1) if found else None


def translate(render: Render) -> Translation:
    """The Go template equal to the training template on every probe, or the reason there is none."""
    try:
        rendered = [render(messages) for messages in PROBES]
    except Exception as exc:  # noqa: BLE001 - a template that fails on plain conversations is reported
        return Translation(None, None, f"the chat template failed on a plain conversation: {exc}")
    default = chatml_default_system(render)
    if default is not None and ("{{" in default or '"""' in default):
        return Translation(None, None, "the template's default system prompt holds Go template or Modelfile quotes")
    for number, (messages, text) in enumerate(zip(PROBES, rendered, strict=True), 1):
        if text != render_chatml(messages, default):
            return Translation(
                None,
                None,
                f"the chat template is not one the workbench translates faithfully (ChatML): probe conversation"
                f" {number} renders {text[:120]!r}; write TEMPLATE by hand, or use llama-server --jinja",
            )
    return Translation("chatml", ollama_chatml(default))


def quoted(text: str) -> str:
    return f'"""{text}"""'


def modelfile(
    gguf_file: str, translation: Translation, stops: list[str], system_prompt: str | None, adapter: str | None = None
) -> str:
    """The Modelfile for a GGUF lying beside it (FROM, and ADAPTER for a GGUF LoRA adapter, are relative to
    the Modelfile). Needs a translation with a template and a system prompt a Modelfile can quote."""
    assert translation.template is not None, "no Modelfile without a faithful template"
    lines = [f"FROM ./{gguf_file}", *([f"ADAPTER ./{adapter}"] if adapter else [])]
    lines.append(f'TEMPLATE """{translation.template}"""')
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    return "\n".join(lines) + "\n"


def unquotable(system_prompt: str | None) -> str | None:
    if system_prompt and '"""' in system_prompt:
        return 'the recipe\'s system prompt holds """, which a Modelfile cannot quote'
    return None


def llama_server_command(gguf: Path, context: int, port: int = 8080, lora: Path | None = None) -> str:
    """llama.cpp's own server on this file with its embedded chat template (`--jinja`), on this machine only;
    `lora`: a GGUF adapter applied on it."""
    args = ["llama-server", "-m", str(gguf), *(["--lora", str(lora)] if lora else [])]
    args += ["--jinja", "-c", str(context), "--host", "127.0.0.1", "--port", str(port)]
    return shlex.join(args)
