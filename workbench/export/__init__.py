"""Exporters: the merged model turned into servable Variants, one module per format (`gguf_variants`
over the llama.cpp tools in `gguf`, `nf4`, `gptq` for GPTQ and AWQ), each named by its format's spec
(`workbench.core.formats`); `making` is what the export stage gives them, `checks` the parity and smoke
checks every variant gets, `load` the transformers loader eval, bench and chat share."""
