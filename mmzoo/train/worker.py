"""The per-process entry point the launchers start: ``python -m mmzoo.train.worker --params P --resume auto``."""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmzoo.train.worker")
    parser.add_argument("--params", required=True)
    parser.add_argument("--resume", default="auto", choices=["auto", "never"])
    parser.add_argument("--local_rank", type=int, default=None)  # passed by some launchers
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from rich.console import Console

    from ..errors import MmzooError
    from ..quiet import quiet_libraries
    from .config import load_config
    from .loop import run_training

    quiet_libraries()
    try:
        run_training(load_config(args.params), resume=args.resume, console=Console(stderr=True))
    except MmzooError as exc:
        sys.stderr.write(f"mmzoo: error: {exc.one_line()}\n")
        return 2
    except KeyboardInterrupt:  # the launcher passes on Ctrl-C: mmzoo train says it once, not a traceback per rank
        if os.environ.get("MMZOO_DEBUG"):
            raise
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
