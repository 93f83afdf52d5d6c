"""The worker-pool side of preprocessing: one encoder per worker process, of the data's kind (conversations or
preference pairs), inherited from the parent when the pool forks, so the tokenizer is loaded once."""
from __future__ import annotations

import os
import signal

from .encode import Encoder, Rejection, Row, Sample, Settings, TokenizerInfo
from .preference import PreferenceEncoder

_WORKER: Encoder | None = None
_INHERITED: Encoder | None = None  # built by the parent before it forks its workers (see share_with_forked_workers)


def share_with_forked_workers(encoder: Encoder | None) -> None:
    """Let workers forked from now on use ``encoder`` (a copy-on-write copy of the parent's) instead
    of loading the tokenizer again each; None forgets it. Spawned workers load their own."""
    global _INHERITED
    _INHERITED = encoder


def init_worker(settings: Settings) -> None:
    global _WORKER
    # The parent turns SIGTERM into an exception while it writes (mmzoo.io.claim); a pool worker must not
    # inherit that: Pool.terminate() stops workers with SIGTERM, and one that did not die at once could
    # hold the task queue's lock and leave its sibling, and the parent's join, waiting forever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # the parent forks its workers with SIGTERM blocked (pipeline._pool)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    # Each worker is one process; Rust-side threads would only fight the other workers for cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    inherited = _INHERITED
    _WORKER = inherited if inherited is not None and inherited.settings == settings else make_encoder(settings)


def make_encoder(settings: Settings, info: TokenizerInfo | None = None) -> Encoder:
    """The encoder of the data's kind: conversations, or preference pairs (both sides through the same code);
    ``info``: the tokenizer folder, when the caller has loaded it already."""
    if settings.kind == "preference":
        return PreferenceEncoder(settings, info)
    return Encoder(settings, info)


def encode_chunk(rows: list[Row]) -> list[Sample | Rejection]:
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER.encode_rows(rows)
