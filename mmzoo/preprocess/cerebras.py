"""``--format cerebras``: the Cerebras modelzoo multimodal HDF5 layout.

Per file ``output_chunk_{proc}_{chunk}.h5`` (~1 MiB of examples):
``data`` int32 [N, 5, MSL] = input_ids, loss_mask, labels, key_padding_mask, token_modality_idx
(next-token layout: input_ids = tokens[:-1], labels = tokens[1:], loss_mask aligned with labels,
key_padding_mask 1 on padding, token_modality_idx 1 on image placeholders);
``img_path`` strings [N, max_num_img] ("None" when absent), ``has_img`` bool [N],
``img_data_loc`` int32 [N, max_num_img, num_patches] (positions in input_ids, -1 when absent);
gzip, chunks of one example, attribute ``n_examples``. We write everything from one process, so
``proc`` is always 0; the output does not depend on ``--workers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .encode import Sample
from .writer import BufferedShardWriter, h5_file, sha256

TARGET_FILE_BYTES = 1 << 20


class CerebrasWriter(BufferedShardWriter):
    def __init__(self, out: Path, msl: int, num_patches: int, image_token_id: int, pad_id: int, shards: list[dict] | None = None):
        self.out, self.msl, self.num_patches = out, msl, num_patches
        self.image_token_id, self.pad_id = image_token_id, pad_id
        # A sample cannot hold more images than fit in MSL, so this bound fixes the shape up front
        # (streaming writers cannot know the dataset's true maximum before the last file).
        self.max_num_img = max(1, msl // max(1, num_patches))
        per_example = 5 * msl * 4 + self.max_num_img * num_patches * 4
        super().__init__(shards)
        self.per_shard = max(1, TARGET_FILE_BYTES // per_example)  # examples per ~1 MiB file

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
            f.create_dataset("has_img", data=np.array([bool(s.images) for s in samples]), chunks=(1,), **gz)
            f.create_dataset("img_data_loc", data=locs, chunks=(1, self.max_num_img, self.num_patches), **gz)
            f.attrs["n_examples"] = len(samples)
        self.shards.append({"file": name, "n_samples": len(samples), "n_tokens": int(sum(len(s.input_ids) for s in samples)),
                            "sha256": sha256(self.out / name)})
