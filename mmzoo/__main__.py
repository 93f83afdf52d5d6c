"""``python -m mmzoo``: the same command line as ``mmzoo`` (for environments without the script on PATH)."""
from .cli import main

main()
