"""Quantization-aware fine-tuning for the file that will be served: the target's rounding (`grid`), put
into the model's forward pass for training (`modules`), and checked on the exported file (`check`)."""
