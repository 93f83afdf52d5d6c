"""``mmzoo generate``: answer a prompt about an image with a checkpoint of any format mmzoo reads.

Greedy decoding (the default) gives exactly the tokens of transformers' ``generate`` on the hf form
of the same checkpoint: the model is the one :func:`mmzoo.load_model` builds and the inputs come from
the checkpoint's own processor.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ..errors import MmzooError
from .prompt import render_prompt, with_image_markers

__all__ = ["generate"]


def generate(checkpoint: str | Path, prompt: str, images: list[str | Path] | tuple = (), *,
             max_new_tokens: int = 128, template: str = "auto", system: str | None = None,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, dtype: str | None = None,
             device: str = "auto", attn_implementation: str = "sdpa",
             on_text: Callable[[str], None] | None = None, model=None, processor=None) -> dict[str, Any]:
    """Generate an answer; ``on_text`` receives the answer piece by piece as it is decoded.

    ``temperature`` 0 is greedy decoding; above 0 samples (seeded by ``seed``). ``model`` and
    ``processor`` may be passed to reuse them across calls.
    """
    import torch

    from ..models.load import load_model, load_processor

    if max_new_tokens < 1:
        raise MmzooError("--max-new-tokens must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise MmzooError("temperature must be ≥ 0 and top_p in (0, 1]")
    pictures = [_open_image(path) for path in images]
    processor = processor if processor is not None else load_processor(checkpoint)
    tokenizer = processor.tokenizer
    text = render_prompt(tokenizer, with_image_markers(prompt, len(pictures)), template, system)
    if text.count("<image>") != len(pictures):
        raise MmzooError(f"template {template!r} drops the image marker from the prompt")
    # A template that already starts with the BOS token must not get a second one from the tokenizer.
    add_special = not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))
    inputs = processor(images=pictures or None, text=text, return_tensors="pt", add_special_tokens=add_special)
    if model is None:
        model = load_model(checkpoint, dtype=dtype, attn_implementation=attn_implementation)
    _check_context(model, int(inputs["input_ids"].shape[1]), max_new_tokens)
    _check_image_token(model, tokenizer, pictures)
    target = _device(device)
    model.to(target)
    float_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    inputs = {k: (v.to(target, float_dtype) if v.is_floating_point() else v.to(target)) for k, v in inputs.items()}
    streamer = _streamer(tokenizer, on_text) if on_text is not None else None
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    if temperature > 0:
        torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, streamer=streamer,
                                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                                **_neutral_generation(sampling))
    seconds = time.perf_counter() - started
    new_tokens = output[0, inputs["input_ids"].shape[1]:].tolist()
    return {"answer": tokenizer.decode(new_tokens, skip_special_tokens=True), "tokens": new_tokens,
            "prompt": text, "prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": len(new_tokens),
            "seconds": round(seconds, 3), "tokens_per_s": round(len(new_tokens) / seconds, 1) if seconds else None}


def _check_context(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """A prompt or an answer longer than the model's context window is refused before the first forward: past it
    the model is not trained, and the KV cache and attention keep growing with every token (eager attention's
    memory grows with the square of the length; --max-new-tokens 10^12 never ended)."""
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if not isinstance(context, int) or context < 1:
        return
    if prompt_tokens > context:
        raise MmzooError(f"the prompt is {prompt_tokens:,} tokens, more than the model's context of {context:,}")
    if max_new_tokens > context:
        raise MmzooError(f"--max-new-tokens {max_new_tokens:,} is more than the model's context of {context:,} tokens")


def _check_image_token(model, tokenizer, pictures) -> None:
    """The config's image token is the id the tokenizer gives ``<image>``: a config naming another id made
    transformers fail in the forward ("Image features and image tokens do not match, tokens: 0")."""
    expected = getattr(model.config, "image_token_id", None)
    if expected is None:
        expected = getattr(model.config, "image_token_index", None)
    marker = tokenizer.convert_tokens_to_ids("<image>")
    if pictures and expected is not None and marker != expected:
        raise MmzooError(f"the checkpoint's config marks images with token id {expected}, but its tokenizer's <image> "
                         f"is {marker}: the config and the tokenizer do not belong together")


def _neutral_generation(sampling: dict[str, Any]) -> dict[str, Any]:
    # A checkpoint's generation_config may ask for sampling, repetition penalties or top-k; what the
    # user asked for wins, and greedy means greedy.
    return {**dict(top_k=None, repetition_penalty=None, temperature=None, top_p=None), **sampling}


def _open_image(path: str | Path):
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MmzooError("image not found", path=path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise MmzooError(f"not a readable image ({exc.__class__.__name__})", path=path) from exc


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MmzooError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MmzooError("--device cuda asked for, but no CUDA GPU is available")
    return device


def _streamer(tokenizer, on_text: Callable[[str], None]):
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):  # TextStreamer holds back partial words; we only redirect its output
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
