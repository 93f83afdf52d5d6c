"""``mmzoo preprocess --kind preference``: preference pairs (one prompt, a chosen and a rejected answer).

Accepted records (one JSON object each, .json list or .jsonl, like conversation data):

- LLaVA-MoD's ``LazyDPODataset`` (llavamod/data/dataset.py): ``chosen`` and ``rejected`` are two LLaVA
  conversations (``[{"from": "human", "value": "<image>\\n…"}, {"from": "gpt", "value": …}]``) that share
  everything but their last answer, plus ``image`` (a path or a list) and ``id``.
- RLAIF-V / TRL: ``question`` (or ``prompt``) and ``chosen`` / ``rejected`` as plain strings, ``image`` a path;
  ``idx`` is the id when there is no ``id``. A question without an ``<image>`` marker gets one in front
  (``<image>\\n`` + question, as LLaVA-style DPO code builds its prompt), when the record has an image.

Each side is rendered and tokenized by the conversation encoder (same templates, image placement, rejection
reasons), so a pair is exactly the two conversations ``mmzoo preprocess`` would have written. Only the final
answer (and its end-of-turn token) is scored, as TRL's DPO does: the earlier turns are the shared prompt.
A pair is rejected as a whole when either side is: ``bad_schema`` also covers two sides whose prompts differ,
and ``too_long`` a side over ``--max-seq-len`` (a pair is never truncated: the cut could drop the answers
being compared).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .encode import BAD_SCHEMA, Encoder, Rejection, Row, Sample, _Reject
from .templates import IMAGE_MARKER

KINDS = ("conversation", "preference")


class Pair(NamedTuple):
    """One preference record, encoded: written as two consecutive samples (chosen, then rejected)."""
    row: int
    sample_id: str
    chosen: Sample
    rejected: Sample


def conversations(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(chosen row, rejected row) as LLaVA conversation records; a rejection (``_Reject``) otherwise."""
    sample_id = data.get("id", data.get("idx"))
    sample_id = None if sample_id is None else str(sample_id)
    chosen, rejected = data.get("chosen"), data.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):  # LLaVA-MoD: two whole conversations
        pair = chosen, rejected
        if len(chosen) != len(rejected) or chosen[:-1] != rejected[:-1]:
            raise _Reject(BAD_SCHEMA, "'chosen' and 'rejected' must share every turn but the last answer", sample_id)
    elif isinstance(chosen, str) and isinstance(rejected, str):  # RLAIF-V / TRL: question + two answers
        question = data.get("question", data.get("prompt"))
        if not isinstance(question, str):
            raise _Reject(BAD_SCHEMA, "a record with string answers needs a string 'question' (or 'prompt')", sample_id)
        if data.get("image") is not None and IMAGE_MARKER not in question:
            question = f"{IMAGE_MARKER}\n{question}"
        pair = tuple([{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
                     for answer in (chosen, rejected))
    else:
        raise _Reject(BAD_SCHEMA, "needs 'chosen' and 'rejected', both conversations (lists) or both answers (strings)",
                   sample_id)
    base = {"id": sample_id} if sample_id is not None else {}
    if "image" in data:
        base["image"] = data["image"]
    return {**base, "conversations": pair[0]}, {**base, "conversations": pair[1]}


def score_last_answer(sample: Sample) -> Sample:
    """Keep only the last run of scored tokens (the final answer and its end-of-turn token)."""
    mask = sample.loss_mask.copy()
    scored = np.flatnonzero(mask)
    if len(scored):
        gaps = np.flatnonzero(np.diff(scored) > 1)
        start = scored[gaps[-1] + 1] if len(gaps) else scored[0]
        mask[:start] = 0
    return sample._replace(loss_mask=mask)


class PreferenceEncoder(Encoder):
    """The conversation encoder applied to both sides of each record."""

    def encode_rows(self, rows: list[Row]) -> list[Pair | Rejection]:
        sides: list[Row] = []
        parsed: list[Row | Rejection] = []
        for row in rows:
            try:
                _, data = self._parse(row)  # the conversation encoder's JSON and object checks
                chosen, rejected = conversations(data)
            except _Reject as bad:
                parsed.append(Rejection(row.index, row.source, row.position, bad.sample_id, bad.reason, bad.detail))
                continue
            parsed.append(row)
            sides += [row._replace(raw=chosen), row._replace(raw=rejected)]
        encoded = iter(super().encode_rows(sides))
        out: list[Pair | Rejection] = []
        for item in parsed:
            out.append(item if isinstance(item, Rejection) else _pair(next(encoded), next(encoded)))
        return out


def _pair(chosen: Sample | Rejection, rejected: Sample | Rejection) -> Pair | Rejection:
    """Both sides encoded (never truncated: preprocess refuses --truncate for pairs), or the first side's rejection."""
    for side, result in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(result, Rejection):
            return result._replace(detail=f"{side}: {result.detail}")
    return Pair(chosen.row, chosen.sample_id, score_last_answer(chosen), score_last_answer(rejected))
