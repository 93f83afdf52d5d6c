"""``--format cerebras`` / ``cerebras-multimodal``: the Cerebras modelzoo multimodal HDF5 layouts.

``cerebras`` follows what its ``LlavaModel`` (fed by ``LlavaHDF5MapDataProcessor``, which reads only the first four
channels and the first ``img_path``) depends on: it pastes the image features at one fixed position,
``image_start_idx`` (``Llava.compute_input_embeddings``). So the ``<image>`` marker opens its user turn (the
encoder's LLaVA placement, as Cerebras' and LLaVA's own preprocessing do; ``--image-placement keep`` is refused), a
sample holds at most one image and it must sit in the first user turn (others are rejected into rejected.jsonl,
never silently cut), text-only samples get a dummy-image slot of ``num_patches`` placeholders at the same position
with key_padding_mask 1 (its reader feeds a blank image for ``img_path`` "None"), ``has_img`` is [N, 1] and
``max_num_img`` 1, and ``data_params.json`` records ``image_start_idx`` to put in the model config.

``cerebras-multimodal`` is the generic layout (any number of images per sample, wherever the markers sit), as its
MultimodalSimple model reads it through ``img_data_loc``.

Per file ``output_chunk_{proc}_{chunk}.h5`` (~1 MiB of examples):
``data`` int32 [N, 5, MSL] = input_ids, loss_mask, labels, key_padding_mask, token_modality_idx
(next-token layout: input_ids = tokens[:-1], labels = tokens[1:], loss_mask aligned with labels,
key_padding_mask 1 on padding, token_modality_idx 1 on image placeholders);
``img_path`` strings [N, max_num_img] ("None" when absent), ``has_img`` bool ([N] generic, [N, 1] cerebras),
``img_data_loc`` int32 [N, max_num_img, num_patches] (positions in input_ids, MSL when absent);
gzip, chunks of one example, attribute ``n_examples``. We write everything from one process, so
``proc`` is always 0; the output does not depend on ``--workers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io.digest import file_sha256
from .encode import BAD_SCHEMA, IMAGE_COUNT_MISMATCH, TOO_LONG, Encoder, Rejection, Row, Sample
from .templates import IMAGE_MARKER, parse_turns
from .writer import BufferedShardWriter, h5_file

TARGET_FILE_BYTES = 1 << 20


class CerebrasMultimodalWriter(BufferedShardWriter):
    def __init__(self, out: Path, msl: int, num_patches: int, image_token_id: int, pad_id: int, shards: list[dict] | None = None):
        self.out, self.msl, self.num_patches = out, msl, num_patches
        self.image_token_id, self.pad_id = image_token_id, pad_id
        # A sample cannot hold more images than fit in MSL, so this bound fixes the shape up front
        # (streaming writers cannot know the dataset's true maximum before the last file).
        self.max_num_img = max(1, msl // max(1, num_patches))
        per_example = 5 * msl * 4 + self.max_num_img * num_patches * 4
        super().__init__(shards)
        self.per_shard = max(1, TARGET_FILE_BYTES // per_example)  # examples per ~1 MiB file

    def admit(self, result: Sample | Rejection) -> Sample | Rejection:
        """What this layout can hold as is; the generic layout holds every sample."""
        return result

    def has_img(self, samples: list[Sample]) -> np.ndarray:
        return np.array([bool(s.images) for s in samples])

    def _example(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        msl = self.msl
        n = len(s.input_ids) - 1
        data = np.zeros((5, msl), dtype=np.int32)
        data[0, :] = self.pad_id
        data[2, :] = self.pad_id
        data[0, :n] = s.input_ids[:-1]
        data[1, :n] = s.loss_mask[1:]
        data[2, :n] = s.input_ids[1:]
        data[3, n:] = 1
        is_img = data[0] == self.image_token_id
        is_img[n:] = False
        data[4] = is_img
        # As modelzoo's multimodal generator: image placeholders hold pad_id (token_modality_idx marks
        # them), labels after an image token likewise, and absent image slots point at position MSL.
        data[0, is_img] = self.pad_id
        data[2, :n][np.asarray(s.input_ids[1:]) == self.image_token_id] = self.pad_id
        loc = np.full((self.max_num_img, self.num_patches), msl, dtype=np.int32)
        positions = np.flatnonzero(is_img)
        # The last placeholder of an image that ends the sample is dropped by the shift; keep whole images only.
        whole = len(positions) // self.num_patches
        if whole:
            loc[:whole] = positions[: whole * self.num_patches].reshape(whole, self.num_patches)
        return data, loc

    def _write(self) -> None:
        import h5py

        samples, self.pending = self.pending, []
        name = f"output_chunk_0_{len(self.shards)}.h5"
        pairs = [self._example(s) for s in samples]
        data = np.stack([p[0] for p in pairs])
        locs = np.stack([p[1] for p in pairs])
        paths = np.array([[*s.images, *["None"] * (self.max_num_img - len(s.images))] for s in samples], dtype=object)
        gz: dict[str, Any] = dict(compression="gzip", track_times=False)
        with h5_file(self.out / name) as f:
            f.create_dataset("data", data=data, chunks=(1, 5, self.msl), **gz)
            f.create_dataset("img_path", data=paths, dtype=h5py.string_dtype("utf-8"), chunks=(1, self.max_num_img), **gz)
            has_img = self.has_img(samples)
            f.create_dataset("has_img", data=has_img, chunks=(1, *has_img.shape[1:]), **gz)
            f.create_dataset("img_data_loc", data=locs, chunks=(1, self.max_num_img, self.num_patches), **gz)
            f.attrs["n_examples"] = len(samples)
        self.shards.append({"file": name, "n_samples": len(samples), "n_tokens": int(sum(len(s.input_ids) for s in samples)),
                            "sha256": file_sha256(self.out / name)})


# ---------------------------------------------------------------- cerebras (LlavaModel)

def image_start(encoder: Encoder) -> int:
    """Where the template puts an image that opens the first user turn: Cerebras' fixed image_start_idx.
    Encoded exactly as a sample is (the encoder's own rendering, tokenization and assembly)."""
    turns = parse_turns([{"from": "human", "value": IMAGE_MARKER + "\nx"}, {"from": "gpt", "value": "y"}])
    sample = encoder.encode_turns(turns, ["image"])
    if isinstance(sample, Rejection):  # max_seq_len below the template's prompt + one image: no sample could fit
        raise ConfigError(f"--format cerebras: an image sample cannot fit in max_seq_len {encoder.settings.max_seq_len} "
                          f"with this template ({sample.detail})", hint="raise --max-seq-len")
    return int(np.flatnonzero(sample.input_ids == encoder.info.image_token_id)[0])


class CerebrasLlavaWriter(CerebrasMultimodalWriter):
    def __init__(self, out: Path, msl: int, num_patches: int, image_token_id: int, pad_id: int, image_start_idx: int,
                 shards: list[dict] | None = None):
        super().__init__(out, msl, num_patches, image_token_id, pad_id, shards)
        self.max_num_img, self.image_start_idx = 1, image_start_idx
        self.per_shard = max(1, TARGET_FILE_BYTES // (5 * msl * 4 + num_patches * 4))
        self._in_flight: dict[int, tuple[int, int]] = {}  # row index -> (source, position), for rejections

    def prepare(self, row: Row) -> Row:
        """Before encoding (in the main process, in order): remember where the row came from, for a rejection."""
        self._in_flight[row.index] = (row.source, row.position)
        return row

    def admit(self, result: Sample | Rejection) -> Sample | Rejection:
        where = self._in_flight.pop(result.row, (0, 0))
        if isinstance(result, Rejection):
            return result
        start, n = self.image_start_idx, self.num_patches

        def reject(reason: str, detail: str) -> Rejection:
            return Rejection(result.row, *where, result.sample_id, reason, detail)

        if len(result.images) > 1:
            return reject(IMAGE_COUNT_MISMATCH, f"{len(result.images)} images: Cerebras' LlavaModel takes one image per sample")
        ids = result.input_ids
        if result.images:
            at = np.flatnonzero(ids == self.image_token_id)
            if at[0] != start:
                return reject(BAD_SCHEMA, f"the image starts at position {at[0]}, not at image_start_idx {start} "
                                          "(Cerebras' LlavaModel pastes it there): put it in the first user turn")
            return result
        if len(ids) + n > self.msl:
            return reject(TOO_LONG, f"{len(ids)} tokens leave no room for the dummy-image slot of {n} (max_seq_len {self.msl})")
        slot = np.full(n, self.image_token_id, dtype=ids.dtype)
        return result._replace(input_ids=np.concatenate([ids[:start], slot, ids[start:]]),
                               loss_mask=np.concatenate([result.loss_mask[:start], np.zeros(n, result.loss_mask.dtype), result.loss_mask[start:]]))

    def has_img(self, samples: list[Sample]) -> np.ndarray:
        return np.array([[bool(s.images)] for s in samples])

    def _example(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        data, loc = super()._example(s)
        if not s.images:  # the dummy image: its features must not be attended, and no img_data_loc points at it
            start = self.image_start_idx
            data[3, start:start + self.num_patches] = 1
            loc[:] = self.msl
        return data, loc
