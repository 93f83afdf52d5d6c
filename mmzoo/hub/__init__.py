"""Sharing checkpoints through the Hugging Face Hub (or a mirror): ``api.py`` (push, pull over
huggingface_hub), ``cli.py`` (``mmzoo hub push`` / ``pull``), ``demo_step.py`` (the demo's push and pull)."""
