"""Build transformers models from checkpoints of any format (``mmzoo.load_model``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import CorruptFile, MissingDependency, MmzooError, naming, third_party_load
from .build import build_empty, dominant_dtype, llava_config, load_state, state_dict_for

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str) -> None:
    if name not in ATTN_IMPLEMENTATIONS:
        raise MmzooError(f"unknown attn_implementation {name!r} (choose from {', '.join(ATTN_IMPLEMENTATIONS)})")
    if name == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise MissingDependency(
                "attn_implementation 'flash_attention_2' needs flash-attn, which is not installed "
                "(pip install 'mmzoo[flash]' on a CUDA machine, or use sdpa)"
            )


def load_model(path: str | Path, *, dtype: str | None = None, attn_implementation: str = "sdpa", fmt: str | None = None):
    """A ready-to-run transformers model (``eval()`` mode) from a checkpoint in any format mmzoo reads."""
    from ..converters.pipeline import cast, read_checkpoint

    check_attn_implementation(attn_implementation)
    ckpt = read_checkpoint(path, fmt)
    if dtype:
        ckpt = cast(ckpt, dtype)
    with naming(path):  # transformers refusing the config (build.third_party_load) names the checkpoint
        if ckpt.spec.moe:
            from .moe import load_moe_model

            return load_moe_model(ckpt, attn_implementation=attn_implementation)
        return model_from_checkpoint(ckpt, attn_implementation=attn_implementation)


def model_from_checkpoint(ckpt, *, attn_implementation: str = "sdpa"):
    from .multiscale import model_class

    config = llava_config(ckpt.spec)
    state = state_dict_for(ckpt)
    model = build_empty(config, dominant_dtype(state), attn_implementation, cls=model_class(None, ckpt.spec.vision_scales))
    return load_state(model, state, config, ckpt.path).eval()


def load_processor(path: str | Path):
    """The LlavaProcessor (tokenizer + PIL image processor) of a checkpoint in any format (padding images to squares
    first for checkpoints trained so: ``square_images.py``)."""
    import json
    import tempfile

    from transformers import AutoProcessor

    from ..converters.pipeline import read_checkpoint
    from ..converters.common import copy_files, write_json
    from ..converters.hf import processor_config

    from .square_images import with_square_padding

    ckpt = read_checkpoint(path)
    with third_party_load(path, "its tokenizer and processor files"):
        if ckpt.format == "hf":  # the processor never needs the folder's remote MoE modeling code
            processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=False)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                copy_files(ckpt.tokenizer_files, folder)
                if ckpt.image_processor is not None:
                    write_json(folder / "preprocessor_config.json", ckpt.image_processor)
                write_json(folder / "processor_config.json", processor_config(ckpt))
                (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
                processor = AutoProcessor.from_pretrained(tmp)
    if not (hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")):
        # a processor_config.json naming another class (a bare tokenizer, say) gives something else
        raise CorruptFile(f"its processor files load as {type(processor).__name__}, not a processor with a tokenizer "
                          "and an image processor (check processor_config.json)", path=path)
    return with_square_padding(processor, ckpt.spec)  # LibMoE's checkpoints pad images to squares
