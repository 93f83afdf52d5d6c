"""Streaming checkpoint I/O that needs neither torch nor transformers for safetensors files."""
