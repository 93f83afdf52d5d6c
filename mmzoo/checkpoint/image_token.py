"""Give a checkpoint an ``<image>`` token when it has none (the original LLaVA code uses -200 in the
input ids instead, so its checkpoints lack one; transformers' Llava needs a real token id)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..io.tensors import Planned, Source, materialize
from .spec import Checkpoint, find_tokenizer_files

IMAGE_TOKEN = "<image>"


def computed(name: str, shape: tuple[int, ...], dtype: str, make: Callable[[], object]) -> Planned:
    return Planned.of(Source(name, dtype, shape, load=make, origin="computed by mmzoo"))


def append_mean_rows(planned: Planned, extra_rows: int) -> Planned:
    """Append rows equal to the mean of the existing ones (as transformers' LLaVA conversion does,
    without its random noise, so the result is reproducible)."""

    def make():
        tensor = materialize(planned)
        return tensor.float().mean(dim=0, keepdim=True).expand(extra_rows, -1).to(tensor.dtype).contiguous()

    return Planned.concat_rows([planned, computed("mean rows", (extra_rows, *planned.shape[1:]), planned.dtype, make)])


def add_image_token(tokenizer_dir: Path, save_dir: Path) -> int:
    """Copy the tokenizer in ``tokenizer_dir`` to ``save_dir`` byte for byte, adding ``<image>`` to its
    added tokens if it has none (see tokenizer_files.add_special_token). Returns the token's id."""
    from ..errors import ConfigError
    from .tokenizer_files import add_special_token

    try:
        token_id, _ = add_special_token(find_tokenizer_files(tokenizer_dir), save_dir, IMAGE_TOKEN)
    except (ValueError, KeyError, TypeError) as exc:  # malformed tokenizer files
        raise ConfigError(f"cannot add the {IMAGE_TOKEN} token to the tokenizer: {exc}", path=tokenizer_dir) from None
    return token_id


def grow_vocab(tensors: dict[str, Planned], text_config: dict, needed: int, prefix: str = "") -> dict:
    """Grow embed_tokens / lm_head to ``needed`` rows with mean rows; returns the updated text config."""
    vocab = int(text_config["vocab_size"])
    if needed <= vocab:
        return text_config
    for key in (f"{prefix}model.embed_tokens.weight", f"{prefix}lm_head.weight"):
        if key in tensors:
            tensors[key] = append_mean_rows(tensors[key], needed - vocab)
    return {**text_config, "vocab_size": needed}


def ensure_image_token(ckpt: Checkpoint, workdir: Path) -> str | None:
    """Mutates ``ckpt`` so it has an image token; returns a note for the user, or None if it had one."""
    if ckpt.spec.image_token_id is not None:
        return None
    if not ckpt.tokenizer_files:
        from ..errors import ConfigError

        raise ConfigError("the checkpoint has no image token and no tokenizer to add one to", path=ckpt.path)
    source_dir = next(iter(ckpt.tokenizer_files.values())).parent
    token_id = add_image_token(source_dir, workdir)
    text_config = grow_vocab(ckpt.tensors, ckpt.spec.text_config, token_id + 1, prefix="text_model.")
    vision = ckpt.spec.vision_config
    seq = (vision["image_size"] // vision["patch_size"]) ** 2
    if ckpt.spec.vision_feature_select_strategy == "full" and ckpt.spec.vision_type == "clip_vision_model":
        seq += 1
    ckpt.spec = ckpt.spec.model_copy(update={"image_token_id": token_id, "text_config": text_config, "image_seq_length": seq})
    ckpt.tokenizer_files = find_tokenizer_files(workdir)
    return f"added the {IMAGE_TOKEN} token (id {token_id}); new embedding rows are the mean of the existing ones"
