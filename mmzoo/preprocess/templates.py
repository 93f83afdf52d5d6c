"""Conversation templates: turn a LLaVA conversation into text segments with a loss flag.

A rendered sample is a list of :class:`Segment`. The encoder joins them and tokenizes the whole text
in one go (as the reference implementations do), then trains every token whose characters overlap a
loss segment; so the tokens are exactly those of the rendered conversation and the loss mask follows
the assistant spans. ``cut`` marks the end of an assistant turn: the only places where ``--truncate``
may cut (never inside a turn, so never inside an image span). A template that starts with the
tokenizer's BOS says so with ``add_bos`` (the id is prepended, as a tokenizer adds it, instead of
rendering its text: a SentencePiece tokenizer tokenizes the text after a special token differently).
The named templates reproduce LLaVA's ``conversation.py`` separators; ``auto`` renders the tokenizer's
own ``chat_template`` progressively and diffs the prefixes to find the assistant spans.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

from ..errors import MmzooError

IMAGE_MARKER = "<image>"
TEMPLATES = ("auto", "plain", "chatml", "vicuna_v1", "llama3", "phi3", "qwen")


class Segment(NamedTuple):
    text: str
    loss: bool
    cut: bool  # truncation may cut right after this segment


class Turn(NamedTuple):
    role: str  # "system" | "user" | "assistant"
    text: str


def place_images_like_llava(turns: list[Turn]) -> list[Turn]:
    """LLaVA's preprocess_multimodal: in a turn with image markers, the markers move to the front, each
    followed by a newline, and the rest of the text is stripped. (LLaVA collapses several markers of one
    turn into one; here each image keeps its marker, so multi-image data stays consistent.)"""
    placed = []
    for turn in turns:
        count = turn.text.count(IMAGE_MARKER)
        if count:
            text = turn.text.replace(IMAGE_MARKER, "").strip()
            turn = Turn(turn.role, ((IMAGE_MARKER + "\n") * count + text).strip())
        placed.append(turn)
    return placed


class Rendered(NamedTuple):
    segments: list[Segment]
    add_bos: bool  # prepend the tokenizer's BOS id
    llava_chunks: bool  # tokenize the text between <image> markers separately, as LLaVA's tokenizer_image_token


class RenderError(ValueError):
    """A sample the template cannot render (becomes a rejection, not a crash)."""


@dataclass(frozen=True)
class ChatFormat:
    """A LLaVA-style template: ``{eos}`` is replaced with the tokenizer's end-of-sequence token."""

    name: str
    system: str  # prefix when a system text exists, with {system}
    no_system: str  # prefix when there is none
    user: str  # the whole user turn up to the assistant's first token, with {text}
    assistant: str  # the loss part: answer + end-of-turn token
    after_assistant: str = ""  # separator after the end-of-turn token (not trained)
    default_system: str | None = None
    add_bos: bool = False  # the conversation starts with the tokenizer's BOS
    llava_chunks: bool = False  # LLaVA's own preprocessing (tokenizer_image_token) is the reference


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)

FORMATS: dict[str, ChatFormat] = {
    # LLaVA's conv_vicuna_v1 renders "USER: q ASSISTANT: a</s>" and trains everything after "ASSISTANT:",
    # the separating space included (it is part of the answer's first token, "▁The").
    "vicuna_v1": ChatFormat(
        "vicuna_v1", system="{system} ", no_system="", user="USER: {text} ASSISTANT:",
        assistant=" {text}{eos}", default_system=VICUNA_SYSTEM, add_bos=True, llava_chunks=True,
    ),
    "llama3": ChatFormat(
        "llama3",
        system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        no_system="",
        user="<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant="{text}<|eot_id|>",
        default_system=LLAMA3_SYSTEM,
        add_bos=True,
    ),
    # Phi-3's own chat template: BOS, no default system prompt
    "phi3": ChatFormat(
        "phi3", system="<|system|>\n{system}<|end|>\n", no_system="", user="<|user|>\n{text}<|end|>\n<|assistant|>\n",
        assistant="{text}<|end|>", after_assistant="\n", add_bos=True,
    ),
    "chatml": ChatFormat(
        "chatml", system="<|im_start|>system\n{system}<|im_end|>\n", no_system="",
        user="<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", assistant="{text}<|im_end|>", after_assistant="\n",
    ),
    "qwen": ChatFormat(
        "qwen", system="<|im_start|>system\n{system}<|im_end|>\n", no_system="",
        user="<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", assistant="{text}<|im_end|>", after_assistant="\n",
        default_system="You are a helpful assistant.",
    ),
}

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_turns(conversations: object) -> list[Turn]:
    """Validate LLaVA ``conversations``: optional leading system turn, then user/assistant alternating."""
    if not isinstance(conversations, list) or not conversations:
        raise RenderError("'conversations' must be a non-empty list")
    turns: list[Turn] = []
    for i, item in enumerate(conversations):
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise RenderError(f"turn {i} must be an object with a string 'value'")
        role = ROLE_ALIASES.get(str(item.get("from", "")).lower())
        if role is None:
            raise RenderError(f"turn {i} has unknown role {item.get('from')!r}")
        turns.append(Turn(role, item["value"]))
    body = turns[1:] if turns[0].role == "system" else turns
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise RenderError(f"turns must alternate human/gpt after an optional system turn (turn {i} is {turn.role})")
    if not any(t.role == "assistant" for t in body):
        raise RenderError("no gpt turn to train on")
    return turns


def _split_system(turns: list[Turn]) -> tuple[str | None, list[Turn]]:
    if turns[0].role == "system":
        return turns[0].text, turns[1:]
    return None, turns


def render_format(fmt: ChatFormat, turns: list[Turn], bos: str, eos: str) -> Rendered:
    system, body = _split_system(turns)
    system = system if system is not None else fmt.default_system
    prefix = fmt.system.format(system=system) if system is not None else fmt.no_system
    segments: list[Segment] = []
    pending = prefix
    for turn in body:
        if turn.role == "user":
            pending += fmt.user.format(text=turn.text, eos=eos)
            continue
        # A final unanswered user turn is dropped by parse_turns' contract (it ends with an assistant turn
        # or the trailing user text is never trained on).
        segments.append(Segment(pending, False, False))
        segments.append(Segment(fmt.assistant.format(text=turn.text, eos=eos), True, not fmt.after_assistant))
        if fmt.after_assistant:
            segments.append(Segment(fmt.after_assistant, False, True))
        pending = ""
    return Rendered(segments, fmt.add_bos and bool(bos), fmt.llava_chunks)


def render_plain(turns: list[Turn], bos: str, eos: str) -> Rendered:
    """LLaVA pretraining (preprocess_plain): BOS, the human text replaced by its image markers, then
    caption + newline, trained."""
    _, body = _split_system(turns)
    segments: list[Segment] = []
    for turn in body:
        if turn.role == "user":
            segments.append(Segment(IMAGE_MARKER * turn.text.count(IMAGE_MARKER), False, False))
        else:
            segments.append(Segment(turn.text + "\n", True, True))
    return Rendered([s for s in segments if s.text], bool(bos), True)


class JinjaTemplate:
    """The tokenizer's chat_template, rendered the way transformers does (sandboxed jinja, trim blocks),
    within limits (:mod:`mmzoo.preprocess.template_limits`): a template that loops or allocates without
    bound stops the run with one line instead of hanging it or eating the machine's memory."""

    def __init__(self, source: str, bos: str, eos: str):
        import jinja2

        from .template_limits import bounded_environment

        def raise_exception(message: str) -> None:
            raise RenderError(f"chat_template: {message}")

        env = bounded_environment()
        env.globals["raise_exception"] = raise_exception
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise MmzooError(f"the tokenizer's chat_template does not compile: {exc}") from None
        self.bos, self.eos = bos, eos

    def text(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        import jinja2

        from .template_limits import render_bounded

        try:
            return render_bounded(
                self.template, messages=messages, add_generation_prompt=generation_prompt, bos_token=self.bos, eos_token=self.eos
            )
        except jinja2.TemplateError as exc:
            raise RenderError(f"chat_template: {exc}") from None

    def check(self) -> None:
        """Render a minimal conversation once, so a template that cannot work fails the run up front
        (one clear error) instead of rejecting every sample."""
        try:
            self.render([Turn("user", "hi"), Turn("assistant", "hello")])
        except RenderError as exc:
            raise MmzooError(f"the tokenizer's {exc}", hint="pick a named --template") from None

    def render(self, turns: list[Turn]) -> Rendered:
        """Render prefixes of the conversation; the text an assistant turn adds after the generation
        prompt is the trained span (trailing whitespace after the end-of-turn token is not trained)."""
        messages = [{"role": t.role, "content": t.text} for t in turns]
        segments: list[Segment] = []
        done = ""
        for k, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            prompt = self.text(messages[:k], True)
            full = self.text(messages[: k + 1], False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise RenderError("chat_template is not prefix-stable; use a named --template")
            answer = full[len(prompt):]
            trained = answer.rstrip()
            segments.append(Segment(prompt[len(done):], False, False))
            segments.append(Segment(trained, True, trained == answer))
            if trained != answer:
                segments.append(Segment(answer[len(trained):], False, True))
            done = full
        return Rendered([s for s in segments if s.text], False, False)


def make_renderer(name: str, bos: str, eos: str, chat_template: str | None) -> Callable[[list[Turn]], Rendered]:
    if name == "plain":
        return lambda turns: render_plain(turns, bos, eos)
    if name in FORMATS:
        fmt = FORMATS[name]
        return lambda turns: render_format(fmt, turns, bos, eos)
    if name == "auto":
        if not chat_template:
            raise MmzooError("the tokenizer has no chat_template", hint="pick one with --template, e.g. vicuna_v1")
        template = JinjaTemplate(chat_template, bos, eos)
        template.check()
        return template.render
    raise MmzooError(f"unknown template {name!r}", hint="choose one of " + ", ".join(TEMPLATES))
