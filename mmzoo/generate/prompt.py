"""The prompt text a model is asked with: its chat template, or one of the preprocess templates.

Generating in the training format matters: a model fine-tuned with ``--template vicuna_v1`` answers
best when asked in vicuna_v1. ``auto`` uses the checkpoint's own chat template (as transformers and
lmms-eval do); a named template reuses :mod:`mmzoo.preprocess.templates`, so the prompt is byte for byte
the part that preceded the answer during training.
"""
from __future__ import annotations

from ..errors import MmzooError

IMAGE_MARKER = "<image>"


def with_image_markers(prompt: str, n_images: int) -> str:
    """LLaVA's convention: the image goes first, on its own line, unless the prompt places it."""
    present = prompt.count(IMAGE_MARKER)
    if present > n_images:
        raise MmzooError(f"the prompt has {present} {IMAGE_MARKER} markers but {n_images} image(s) were given")
    return IMAGE_MARKER * (n_images - present) + ("\n" if n_images > present else "") + prompt


def render_prompt(tokenizer, prompt: str, template: str = "auto", system: str | None = None) -> str:
    """The text to tokenize: everything up to the assistant's first answer token."""
    if template == "auto":
        return _chat_template(tokenizer, prompt, system)
    from ..preprocess.templates import FORMATS, Turn, render_format, render_plain

    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    turns = ([Turn("system", system)] if system else []) + [Turn("user", prompt), Turn("assistant", "")]
    if template == "plain":  # pretraining format: the image markers alone, the caption follows
        rendered = render_plain(turns, bos, eos)
    elif template in FORMATS:
        rendered = render_format(FORMATS[template], turns, bos, eos)
    else:
        raise MmzooError(f"unknown template {template!r}", hint="choose one of auto, plain, " + ", ".join(FORMATS))
    # preprocess adds BOS as an id, not as text: spelled out here, so the prompt shows what the model sees
    return (bos if rendered.add_bos else "") + rendered.segments[0].text


def _chat_template(tokenizer, prompt: str, system: str | None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise MmzooError("the checkpoint's tokenizer has no chat_template",
                         hint="pick the training format with --template, e.g. vicuna_v1 or plain")
    n_images = prompt.count(IMAGE_MARKER)
    head = [{"role": "system", "content": system}] if system else []
    # Plain-string templates (LLaVA-style USER:/ASSISTANT:) print the content as it is; published LLaVA
    # templates (llava-hf) expect content parts and emit <image> for each image part (given a string, they
    # drop it). Try the string first, keep a rendering only when it holds every image and the text, and
    # never one that printed the parts list itself.
    text = prompt.replace(IMAGE_MARKER, "").strip()
    parts = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    for content in (prompt, parts):
        messages = head + [{"role": "user", "content": content}]
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that cannot take this content shape: try the other
            continue
        if rendered.count(IMAGE_MARKER) == n_images and text in rendered and "{'type'" not in rendered:
            return rendered
    raise MmzooError("the checkpoint's chat_template does not render an image prompt",
                     hint="pick the training format with --template, e.g. vicuna_v1")
