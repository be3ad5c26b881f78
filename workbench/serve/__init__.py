"""Serving a run's variants: OpenAI-compatible servers per format (`backends`), talking to them with the
official `openai` client (`client`), checking what a served variant answers against `workbench chat`
(`served`), and what llama.cpp and Ollama users need next to a GGUF (`ollama`). Starting, listing and
stopping servers for a run is `workbench.pipeline.servers`."""
