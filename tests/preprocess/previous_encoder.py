"""The conversation encoder as it was before the fast paths, kept verbatim as the oracle for
tests/preprocess/test_fast_path.py (mmzoo/preprocess/encode.py at commit e3eff1b): every text tokenized by
tokenizers' ``encode_batch`` with character offsets (``TextTokenizer.encode_with_offsets``, which is what
``TextTokenizer.encode`` was), and per conversation, ids gathered in Python lists, the loss mask from the
offsets, image expansion and truncation done with numpy on that conversation alone. Parsing, validation and
rendering are mmzoo's own (``Encoder.prepare``): the comparison is about tokenization and assembly."""
from __future__ import annotations

from typing import Any

import numpy as np

from mmzoo.preprocess.encode import IMAGE_COUNT_MISMATCH, TOO_LONG, Encoder, Rejection, Row, Sample
from mmzoo.preprocess.tokenization import token_at


class PreviousEncoder(Encoder):
    def encode_rows(self, rows: list[Row]) -> list[Sample | Rejection]:
        """Render all rows (mmzoo's own ``prepare``), tokenize every text of the chunk in one batch call with
        offsets, then assemble each conversation alone."""
        prepared = [self.prepare(row) for row in rows]
        encodings = self.tokenizer.encode_with_offsets(
            [piece[0] for item in prepared if not isinstance(item, Rejection) for piece in item.pieces])
        out: list[Sample | Rejection] = []
        cursor = 0
        for item in prepared:
            if isinstance(item, Rejection):
                out.append(item)
                continue
            encoded = encodings[cursor: cursor + len(item.pieces)]
            cursor += len(item.pieces)
            sample = self._assemble(item.row, item.sample_id, item.images, item.add_bos, item.pieces, encoded)
            out.append(sample._replace(truncated=True) if item.cut and isinstance(sample, Sample) else sample)
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

