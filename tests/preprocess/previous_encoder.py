"""The conversation encoder as it was before the fast paths, kept verbatim as the oracle for
tests/preprocess/test_fast_path.py (mmzoo/preprocess/encode.py at commit e3eff1b): every text tokenized by
tokenizers' ``encode_batch`` with character offsets (``TextTokenizer.encode_with_offsets``, which is what
``TextTokenizer.encode`` was), and per conversation, ids gathered in Python lists, the loss mask from the
offsets, image expansion and truncation done with numpy on that conversation alone. Parsing, validation and
rendering are mmzoo's own (imported): the comparison is about tokenization and assembly."""
from __future__ import annotations

from typing import Any

import numpy as np

from mmzoo.preprocess.encode import (
    EMPTY_ANSWER, BAD_SCHEMA, IMAGE_COUNT_MISMATCH, TOO_LONG, Encoder, Rejection, Row, Sample, _Reject,
    _within_char_budget, text_pieces,
)
from mmzoo.preprocess.templates import IMAGE_MARKER, RenderError, parse_turns, place_images_like_llava
from mmzoo.preprocess.tokenization import token_at


class PreviousEncoder(Encoder):
    def encode_rows(self, rows: list[Row]) -> list[Sample | Rejection]:
        """Render all rows, tokenize every text of the chunk in one batch call, then assemble."""
        rendered: list[tuple[Row, str | None, list[str], Any, list] | Rejection] = []
        texts: list[str] = []
        for row in rows:
            try:
                sample_id, data = self._parse(row)
                try:
                    turns = parse_turns(data.get("conversations"))
                except RenderError as exc:
                    raise _Reject(BAD_SCHEMA, str(exc), sample_id) from None
                images = self._image_list(data, sample_id)
                markers = sum(t.text.count(IMAGE_MARKER) for t in turns)
                if markers != len(images):
                    raise _Reject(IMAGE_COUNT_MISMATCH, f"{len(images)} image(s) but {markers} {IMAGE_MARKER} marker(s)", sample_id)
                self._check_turns(turns, sample_id)
                images = [self._check_image(p, sample_id) for p in images]
                turns, cut = _within_char_budget(turns, self.settings, sample_id)
                images = images[: sum(t.text.count(IMAGE_MARKER) for t in turns)] if cut else images
                if images and self.settings.image_placement == "llava":
                    turns = place_images_like_llava(turns)
                try:
                    result = self.render(turns)
                except RenderError as exc:
                    raise _Reject(BAD_SCHEMA, str(exc), sample_id) from None
                if not any(s.loss and s.text.strip() for s in result.segments):
                    raise _Reject(EMPTY_ANSWER, "no assistant text to train on", sample_id)
            except _Reject as rej:
                rendered.append(Rejection(row.index, row.source, row.position, rej.sample_id, rej.reason, rej.detail))
                continue
            pieces = text_pieces(result.segments, result.llava_chunks)
            rendered.append((row, sample_id, images, result, pieces, cut))
            texts.extend(piece[0] for piece in pieces)
        encodings = self.tokenizer.encode_with_offsets(texts)
        out: list[Sample | Rejection] = []
        cursor = 0
        for item in rendered:
            if isinstance(item, Rejection):
                out.append(item)
                continue
            row, sample_id, images, result, pieces, cut = item
            encoded = encodings[cursor: cursor + len(pieces)]
            cursor += len(pieces)
            sample = self._assemble(row, sample_id, images, result.add_bos, pieces, encoded)
            out.append(sample._replace(truncated=True) if cut and isinstance(sample, Sample) else sample)
        return out

    def _assemble(self, row: Row, sample_id: str | None, images: list[str], add_bos: bool,
                  pieces: list[tuple[str, list[tuple[int, int]], list[int]]], encoded: list[tuple[Any, int]]) -> Sample | Rejection:
        image_id, n_img = self.info.image_token_id, self.settings.num_image_tokens
        # Python lists while assembling, one array per field at the end: a sample has one or two pieces,
        # and a numpy call per piece and field cost more than the few list operations (profiled).
        ids: list[int] = [self.info.bos_id] if add_bos and self.info.bos_id is not None else []
        trained: list[tuple[int, int]] = []  # [first, last + 1) token ranges of assistant text
        turn_ends: list[int] = []  # the token holding a turn's last character
        for k, ((text, spans, ends), (encoding, shift)) in enumerate(zip(pieces, encoded)):
            if k:  # the <image> marker between two LLaVA chunks
                ids.append(image_id)
            base = len(ids)
            ids += encoding.ids
            # a token is trained when its characters overlap an assistant span
            for start, stop in spans:
                first = token_at(encoding, start + shift, stop + shift, 1)
                if first is not None:
                    trained.append((base + first, base + token_at(encoding, stop + shift - 1, start + shift - 1, -1) + 1))
            for end in ends:  # the token holding a turn's last character ends the turn
                last = token_at(encoding, end + shift - 1, shift - 1, -1)
                if last is not None:
                    turn_ends.append(base + last)
        arr = np.array(ids, dtype=np.int32)
        loss_mask = np.zeros(len(arr), dtype=np.uint8)
        for first, stop in trained:
            loss_mask[first:stop] = 1
        cut_after = np.zeros(len(arr), dtype=bool)
        cut_after[turn_ends] = True
        is_image = arr == image_id
        n_images = int(is_image.sum())
        if n_images != len(images):  # a marker glued to other text that the tokenizer did not split
            return Rejection(row.index, row.source, row.position, sample_id, IMAGE_COUNT_MISMATCH,
                             f"{len(images)} image(s) but {n_images} image token(s) after tokenization")
        loss_mask[is_image] = 0
        if n_images:  # each image token becomes n_img copies (numpy: no per-token Python work)
            repeats = np.where(is_image, n_img, 1)
            arr, loss_mask, cut_after = np.repeat(arr, repeats), np.repeat(loss_mask, repeats), np.repeat(cut_after & ~is_image, repeats)
        truncated = False
        limit = self.settings.max_seq_len
        if len(arr) > limit:
            # the longest prefix ending after an assistant turn, with something trained, that fits
            ends = [e + 1 for e in np.nonzero(cut_after[:limit])[0] if loss_mask[: e + 1].any()]
            if not self.settings.truncate or not ends:
                detail = f"{len(arr)} tokens > max_seq_len {limit}" + (" and no turn boundary fits" if self.settings.truncate else "")
                return Rejection(row.index, row.source, row.position, sample_id, TOO_LONG, detail)
            total = ends[-1]
            images = images[: int((arr[:total] == image_id).sum()) // max(n_img, 1)]
            arr, loss_mask, truncated = arr[:total], loss_mask[:total], True
        sid = sample_id if sample_id is not None else f"{row.source}:{row.position}"
        return Sample(row.index, sid, arr, loss_mask, images, truncated)

