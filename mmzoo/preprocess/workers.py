"""The worker-pool side of preprocessing: one encoder per worker process, of the data's kind (conversations or
preference pairs), inherited from the parent when the pool forks, so the tokenizer is loaded once."""
from __future__ import annotations

import os
import signal
from itertools import accumulate
from typing import Any, Union

import numpy as np

from .encode import Encoder, Rejection, Row, Sample, Settings, TokenizerInfo
from .preference import Pair, PreferenceEncoder

Result = Union[Sample, Pair, Rejection]

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


def encode_chunk(rows: list[Row]) -> "Packed":
    assert _WORKER is not None, "init_worker was not called"
    return pack(_WORKER.encode_rows(rows))


# A chunk's results travel from a worker to the parent with every sample's token ids and loss mask in two arrays
# (pickled as two buffers): pickling two small arrays per sample cost about a tenth of the tokenizer's own CPU
# time, in the worker and again in the parent (20 000 LLaVA-shaped samples, 2026-11-27).
Packed = tuple[list[Any], np.ndarray, np.ndarray, list[int]]


def _sides(result: Result) -> tuple[Sample, ...]:
    if isinstance(result, Sample):
        return (result,)
    return (result.chosen, result.rejected) if isinstance(result, Pair) else ()


def _without_arrays(result: Result) -> Result:
    if isinstance(result, Sample):
        return result._replace(input_ids=None, loss_mask=None)
    if isinstance(result, Pair):
        return result._replace(chosen=_without_arrays(result.chosen), rejected=_without_arrays(result.rejected))
    return result


def pack(results: list[Result]) -> Packed:
    samples = [side for result in results for side in _sides(result)]
    if not samples:
        return list(results), np.zeros(0, np.int32), np.zeros(0, np.uint8), []
    return ([_without_arrays(r) for r in results], np.concatenate([s.input_ids for s in samples]),
            np.concatenate([s.loss_mask for s in samples]), [len(s.input_ids) for s in samples])


def unpack(packed: Packed) -> list[Result]:
    """``pack``'s results again; each sample's arrays are views of the chunk's two arrays."""
    results, input_ids, loss_mask, lengths = packed
    bounds = list(accumulate(lengths, initial=0))
    views = iter([(input_ids[a:b], loss_mask[a:b]) for a, b in zip(bounds, bounds[1:])])

    def filled(sample: Sample) -> Sample:
        ids, mask = next(views)
        return sample._replace(input_ids=ids, loss_mask=mask)

    out: list[Result] = []
    for result in results:
        if isinstance(result, Sample):
            result = filled(result)
        elif isinstance(result, Pair):
            result = result._replace(chosen=filled(result.chosen), rejected=filled(result.rejected))
        out.append(result)
    return out
