"""Exporters: one module per format, each turning the merged model into servable Variants."""
