"""``python -m mmzoo.train.torchrun ARGS``: torchrun (``python -m torch.distributed.run ARGS``, same arguments, same
behaviour), quiet when it is stopped.

``mmzoo train --nproc N`` passes Ctrl-C / SIGTERM on to torchrun, which stops its workers and then lets its
``SignalException`` end the process — a 20-line Python traceback on the user's terminal, after three warning lines
about the signal, under mmzoo's own one line. Here the stop ends with its exit status (128 + the signal: 130 for
SIGINT, 143 for SIGTERM) and nothing printed; ``mmzoo train`` says what happened. ``MMZOO_DEBUG=1`` (``--debug``)
keeps torchrun's own output. Everything else — worker failures and their report included — is torchrun's.
"""
from __future__ import annotations

import logging
import os
import sys

# what torchrun's agent logs when it is stopped by a signal: "Received 2 death signal, shutting down workers",
# "Sending process 123 closing signal SIGINT"
_STOP_LOGGERS = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")


def _not_about_the_stop(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("death signal" in message or "closing signal" in message)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    debug = bool(os.environ.get("MMZOO_DEBUG"))
    if not debug:
        for name in _STOP_LOGGERS:
            logging.getLogger(name).addFilter(_not_about_the_stop)
    try:
        run.main(argv)
    except SignalException as stop:  # raised once the workers were stopped (torchrun's agent shuts them down first)
        if debug:
            raise
        return 128 + int(stop.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
