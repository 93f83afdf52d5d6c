"""``python -m mmzoo.train.torchrun ARGS``: torchrun (``python -m torch.distributed.run ARGS``, same arguments, same
behaviour), quiet when it is stopped.

``mmzoo train --nproc N`` passes Ctrl-C / SIGTERM on to torchrun, which stops its workers and then lets its
``SignalException`` end the process — a 20-line Python traceback on the user's terminal, after three warning lines
about the signal, under mmzoo's own one line. Here the stop ends with its exit status (128 + the signal: 130 for
SIGINT, 143 for SIGTERM) and nothing printed; ``mmzoo train`` says what happened. Likewise a worker that exits with status 2 has
said why in its own ``mmzoo: error:`` line (a refusal of its data, a stuck data worker): torchrun's failure report
(a traceback and a table, "exitcode: 2, traceback: N/A") adds nothing to it, so the launcher exits 2 quietly.
``MMZOO_DEBUG=1`` (``--debug``) keeps torchrun's own output. Every other failure is reported by torchrun as usual.
"""
from __future__ import annotations

import logging
import os
import sys

# what torchrun's agent logs when it is stopped by a signal ("Received 2 death signal, shutting down workers",
# "Sending process 123 closing signal SIGINT") or when a worker said why it failed ("failed (exitcode: 2) …")
_AGENT_LOGGERS = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")
SAID_IN_ONE_LINE = 2  # the exit status of mmzoo.train.worker after its `mmzoo: error:` line


def _not_said_already(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("death signal" in message or "closing signal" in message
                or f"failed (exitcode: {SAID_IN_ONE_LINE})" in message)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    debug = bool(os.environ.get("MMZOO_DEBUG"))
    if not debug:
        for name in _AGENT_LOGGERS:
            logging.getLogger(name).addFilter(_not_said_already)
    try:
        run.main(argv)
    except SignalException as stop:  # raised once the workers were stopped (torchrun's agent shuts them down first)
        if debug:
            raise
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:  # the other workers were stopped already
        if debug or failed.get_first_failure()[1].exitcode != SAID_IN_ONE_LINE:
            raise
        return SAID_IN_ONE_LINE
    return 0


if __name__ == "__main__":
    sys.exit(main())
