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
        _within_limits(tokenizer, messages)
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that cannot take this content shape: try the other
            continue
        if rendered.count(IMAGE_MARKER) == n_images and text in rendered and "{'type'" not in rendered:
            return rendered
    raise MmzooError("the checkpoint's chat_template does not render an image prompt",
                     hint="pick the training format with --template, e.g. vicuna_v1")


def _within_limits(tokenizer, messages: list[dict]) -> None:
    """Render the checkpoint's chat_template once in mmzoo's bounded sandbox (the limits `mmzoo preprocess` applies:
    2 s, 32 Mi characters, no runaway recursion) before transformers renders it without limits: a template that loops
    (``range`` inside ``range``) hung `generate` forever, one that doubles a string forty times asked for terabytes.

    The probe gets transformers' globals, filters and variables, so a template renders the same in both; its output
    is discarded (transformers' rendering is the one used, as before). Errors other than a limit are left to
    transformers, which reports them its own way."""
    import jinja2

    from ..preprocess.template_limits import TemplateLimitError, bounded_environment, render_bounded

    env = bounded_environment()
    env.add_extension(_generation_tag())
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=dict)
    try:
        template = env.from_string(tokenizer.chat_template)
        render_bounded(template, messages=messages, tools=None, documents=None, add_generation_prompt=True,
                       **tokenizer.special_tokens_map)
    except TemplateLimitError:
        raise
    except (jinja2.TemplateError, MmzooError, TypeError, ValueError, KeyError, AttributeError, IndexError):
        return  # not a limit: transformers renders it (or says what is wrong) as before


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:  # transformers' filter
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    from datetime import datetime

    return datetime.now().strftime(format)


def _generation_tag():
    """transformers' ``{% generation %}…{% endgeneration %}`` block (marks the trained span): rendered as its body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationTag
