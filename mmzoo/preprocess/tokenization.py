"""Tokenize text exactly as transformers' tokenizer for the same folder does, fast, and tell which token
holds each character (the loss masks need that).

Byte-level BPE tokenizers (Llama-3, Qwen2, ...) are used as tokenizer.json says. SentencePiece
tokenizers need care: transformers 4.x's LlamaConverter writes tokenizer.json with a
``Prepend("▁")`` normaliser, which puts the "dummy prefix" ▁ before the text after every special
token; the slow tokenizer with ``legacy: false`` (what LLaVA-1.5, Vicuna v1.5 and Phi-3 ship, and what
the original LLaVA code trains with) puts it only at the start of the text. For those, the prefix is
taken out of the tokenizer and added here where the slow tokenizer adds it.

Three ways to find a character's token, with the same answers: tokenizers' character offsets (any tokenizer);
for the SentencePiece layout that allows it, the tokens' lengths in the vocabulary, which lets tokenizers
skip its offsets and its space-replacing regular expression (a third of its CPU time; see
spaces_and_lengths_path); for byte-level BPE (Llama-3, Qwen2), the tokens' UTF-8 byte lengths, turned into
character positions with numpy instead of one ``char_to_token`` call per span edge (see byte_level_lengths).
"""
from __future__ import annotations

import copy
import json
import unicodedata
from itertools import chain
from typing import Any, NamedTuple, Optional

import numpy as np

SPIECE_PREFIX = "\u2581"


def steps_of(component: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json normaliser, pre-tokenizer or post-processor: a Sequence's items, else the
    component itself ([] when there is none)."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return next((component[key] for key in ("normalizers", "pretokenizers", "processors") if key in component), [])
    return [component]


def _drops_dummy_prefix(data: dict[str, Any]) -> bool:
    """Take the automatic ▁ prefix out of a tokenizer.json; True if there was one."""
    parts = steps_of(data.get("normalizer"))
    kept = [n for n in parts if not (n.get("type") == "Prepend" and n.get("prepend") == SPIECE_PREFIX)]
    if len(kept) != len(parts):
        data["normalizer"] = {"type": "Sequence", "normalizers": kept}
        return True
    for item in steps_of(data.get("pre_tokenizer")):
        if item.get("type") == "Metaspace" and item.get("prepend_scheme", "always") == "always" and item.get("add_prefix_space", True):
            item["prepend_scheme"] = "never"
            item.pop("add_prefix_space", None)
            return True
    return False


RESAVED_BY_TRANSFORMERS5 = (
    "the tokenizer files were re-saved by transformers 5 (tokenizer_config.json has \"backend\"; tokenizer.json has the "
    "SentencePiece pieces behind a Metaspace pre-tokenizer that prefixes only the first piece of text): such a save "
    "tokenizes text that starts with a space, and the text after a special token, unlike the original tokenizer of the "
    "checkpoint (Llama-2's: 32 of llama.cpp's 47 test strings as the original); use the checkpoint's original "
    "tokenizer files unless the model was trained with these"
)


def resaved_by_transformers5(data: dict[str, Any], config: dict[str, Any]) -> bool:
    """A SentencePiece (Llama-2 / Vicuna / Mistral / Phi-3 style) tokenizer as transformers 5's
    save_pretrained writes it: byte-fallback BPE, no "▁" normaliser, a Metaspace pre-tokenizer with
    prepend_scheme "first", and the 5.x "backend" entry in tokenizer_config.json. Published checkpoints
    ship the slow tokenizer.model and/or transformers 4.x's layout (Prepend + Replace normaliser)."""
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    return (
        "backend" in config and model.get("type") == "BPE" and model.get("byte_fallback") is True
        and pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first"
        and not (data.get("normalizer") or {}).get("normalizers")
    )


# Characters the vocabulary lacks (byte tokens), text after an added token, tabs and newlines: where the
# lengths path could disagree with tokenizers' offsets, checked once per tokenizer (TextTokenizer).
PROBE = ["Hello world", " ü 🦙.cpp \n\t x", "</s>a <s>b 😁 ?", "Cửa Việt ត្រូវ 🚀 (normal) 😶\u200d🌫️", "\n \n\n  \t\t x"]
# The same for byte-level BPE, whose tokens can end inside a character: CJK, combining marks that compose with
# nothing (so the text is its own NFC, as Qwen2's normaliser needs), emoji sequences, text glued to added tokens.
BYTE_LEVEL_PROBE = PROBE + [
    "<image>\nWhat is 北京的天气? 東京は晴れ。", "q\u0307 q\u0323\u0307 g\u0303 क्षि ñ Ω", "<|im_end|>\n<|im_start|>assistant\n",
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n", "🐈\u200d⬛ 👍🏽\t\t\n\n  x", "'s 've 123456 ...   \r\n",
]


class TextTokenizer:
    """``encode(texts)`` -> :class:`Encoded` (token ids and where each character went); no special tokens are added."""

    def __init__(self, json_text: str, legacy: bool, loaded: Any = None, parsed: Optional[dict[str, Any]] = None):
        """``loaded``: ``json_text`` already loaded as a ``tokenizers.Tokenizer``, used as is when
        nothing needs changing (saves loading a large vocabulary twice); ``parsed``: ``json_text`` already
        parsed, or its outline (tokenizer_outline), left unchanged: a byte-level tokenizer needs no more, the
        others (SentencePiece layouts, rebuilt here without their dummy prefix) are parsed in full."""
        from tokenizers import Tokenizer

        if parsed is not None and parsed.get("outline") and not _is_byte_level(parsed):
            parsed = None
        data = json.loads(json_text) if parsed is None else _copy_for_changes(parsed)
        self.added = tuple(t["content"] for t in data.get("added_tokens", []))
        # legacy=True keeps 4.x's behaviour (prefix after special tokens too): the tokenizer as it is.
        self.manual_prefix = not legacy and _drops_dummy_prefix(data)
        self._json_text = json_text
        self._deterministic = not (data.get("model") or {}).get("dropout")
        self._offsets_tokenizer = None if self.manual_prefix else loaded  # loaded when first needed
        self.char_lengths = spaces_and_lengths_path(data)
        if self.char_lengths is not None:
            data["normalizer"] = None  # its only step, spaces -> "▁", is done in _spaced (str.replace)
            self._lengths_tokenizer = Tokenizer.from_str(json.dumps(data))
            if not self._lengths_agree_with_offsets():
                self.char_lengths = None
        if self.char_lengths is None and self._offsets_tokenizer is None:
            self._offsets_tokenizer = self._load_offsets_tokenizer()
        self.byte_lengths = None if self.char_lengths is not None or self.manual_prefix else byte_level_lengths(data)
        if self.byte_lengths is not None and not self._byte_lengths_agree_with_offsets():
            self.byte_lengths = None

    def _load_offsets_tokenizer(self) -> Any:
        """The tokenizer with offsets: tokenizer.json as it is, less the dummy prefix when that is added here."""
        from tokenizers import Tokenizer

        if not self.manual_prefix:
            return Tokenizer.from_str(self._json_text)
        data = json.loads(self._json_text)
        _drops_dummy_prefix(data)
        return Tokenizer.from_str(json.dumps(data))

    def _shifts(self, texts: list[str]) -> list[int]:
        if not self.manual_prefix:
            return [0] * len(texts)
        # The slow tokenizer prefixes the text with "▁" unless it starts with a special token.
        return [0 if (not t or t.startswith(self.added)) else 1 for t in texts]

    def encode_with_offsets(self, texts: list[str], once: bool = False) -> list[tuple[Any, int]]:
        """Per text: (tokenizers Encoding, shift), where character c of the text is character c + shift
        of the encoded string (1 where a "▁" prefix was added here). ``once``: each distinct text encoded
        once (once_each); plain ``encode_batch`` otherwise, which the tests compare with."""
        if not texts:
            return []
        if self._offsets_tokenizer is None:  # the lengths path could not account for a text: not seen so far
            self._offsets_tokenizer = self._load_offsets_tokenizer()
        shifts = self._shifts(texts)
        encodings = once_each(self._offsets_tokenizer.encode_batch, [" " + t if s else t for t, s in zip(texts, shifts)],
                              once and self._deterministic)
        return list(zip(encodings, shifts))

    def encode(self, texts: list[str]) -> "Encoded":
        if self.byte_lengths is not None:
            encoded = self.encode_with_offsets(texts, once=True)
            return FromByteLengths.build(encoded, texts, self.byte_lengths) or WithOffsets(encoded)
        if self.char_lengths is not None:
            shifts = self._shifts(texts)
            spaced = [_spaced(" " + t if s else t) for t, s in zip(texts, shifts)]
            found = FromLengths.build(once_each(self._lengths_tokenizer.encode_batch_fast, spaced, self._deterministic), spaced,
                                      shifts, self.char_lengths)
            if found is not None:
                return found
        return WithOffsets(self.encode_with_offsets(texts, once=True))

    def _lengths_agree_with_offsets(self) -> bool:
        """The lengths path finds, for every character of PROBE, the token that tokenizers' own offsets give."""
        spaced = [_spaced(t) for t in PROBE]
        zeros = [0] * len(spaced)
        lengths = FromLengths.build(self._lengths_tokenizer.encode_batch_fast(spaced, add_special_tokens=False), spaced, zeros,
                                    self.char_lengths)
        offsets = WithOffsets(list(zip(self._lengths_tokenizer.encode_batch(spaced, add_special_tokens=False), zeros)))
        if lengths is None or not np.array_equal(lengths.ids, offsets.ids):
            return False
        return _same_tokens_everywhere(lengths, offsets, spaced)

    def _byte_lengths_agree_with_offsets(self) -> bool:
        """The byte-lengths path gives every text of BYTE_LEVEL_PROBE and each character its token where
        tokenizers' own offsets do (walking forwards and backwards)."""
        encoded = self.encode_with_offsets(BYTE_LEVEL_PROBE)
        lengths = FromByteLengths.build(encoded, BYTE_LEVEL_PROBE, self.byte_lengths)
        return lengths is not None and _same_tokens_everywhere(lengths, WithOffsets(encoded), BYTE_LEVEL_PROBE)


def once_each(encode_batch: Any, texts: list[str], deterministic: bool = True) -> list[Any]:
    """``encode_batch(texts)`` (tokenizers' ``encode_batch`` or ``encode_batch_fast``, no special tokens added) with
    each distinct text encoded once, its encoding repeated where the text is. Tokenization is a function of the
    text alone, so nothing changes but the time: with LLaVA's templates every sample whose image comes first
    starts with the same piece, the system prompt and "USER: " (a fifth of the text of LLaVA-shaped samples).
    Not for a BPE with dropout (``deterministic`` False), whose every encoding is drawn anew."""
    if not deterministic:
        return encode_batch(texts, add_special_tokens=False)
    first: dict[str, int] = {}
    index = [first.setdefault(text, len(first)) for text in texts]
    if len(first) == len(texts):
        return encode_batch(texts, add_special_tokens=False)
    unique = encode_batch(list(first), add_special_tokens=False)
    return [unique[k] for k in index]


def _same_tokens_everywhere(a: "Encoded", b: "Encoded", texts: list[str]) -> bool:
    """Same ids, and for every character of every text the same token in both walking directions."""
    if not (np.array_equal(a.ids, b.ids) and np.array_equal(a.starts, b.starts)):
        return False
    text = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    char = np.concatenate([np.arange(len(t)) for t in texts])
    for step, stop in ((1, np.array([len(texts[k]) for k in text], dtype=np.int64)), (-1, np.full(len(char), -1))):
        if not np.array_equal(a.tokens_at(text, char, stop, step), b.tokens_at(text, char, stop, step)):
            return False
    return True


def tokenizer_outline(tokenizer: Any) -> dict[str, Any]:
    """A loaded ``tokenizers.Tokenizer``'s settings in tokenizer.json's layout, the model's vocabulary included but
    not its merges, read from the tokenizer itself: parsing Llama-3's 17 MB tokenizer.json again in Python took
    0.25-0.6 s, a third to a half of loading the tokenizer, before any worker could start (``outline``: True)."""
    def part(component: Any) -> Any:
        return None if component is None else json.loads(component.__getstate__())

    model = tokenizer.model
    settings = {key: getattr(model, key, None) for key in ("dropout", "unk_token", "continuing_subword_prefix",
                                                             "end_of_word_suffix", "fuse_unk", "byte_fallback")}
    added = [{"id": token_id, "content": token.content, "single_word": token.single_word, "lstrip": token.lstrip,
              "rstrip": token.rstrip, "normalized": token.normalized, "special": token.special}
             for token_id, token in sorted(tokenizer.get_added_tokens_decoder().items())]
    return {"outline": True, "added_tokens": added, "normalizer": part(tokenizer.normalizer),
            "pre_tokenizer": part(tokenizer.pre_tokenizer), "post_processor": part(tokenizer.post_processor),
            "truncation": tokenizer.truncation, "padding": tokenizer.padding,
            "model": {"type": type(model).__name__, **settings, "vocab": tokenizer.get_vocab(with_added_tokens=False)}}


def _is_byte_level(data: dict[str, Any]) -> bool:
    return any(item.get("type") == "ByteLevel" for item in steps_of(data.get("pre_tokenizer")))


def _copy_for_changes(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a parsed tokenizer.json that TextTokenizer may change (its normaliser and pre-tokenizer, which
    _drops_dummy_prefix edits) without touching the caller's; the vocabulary and merges are shared, never changed."""
    data = dict(data)
    for key in ("normalizer", "pre_tokenizer"):
        data[key] = copy.deepcopy(data.get(key))
    return data


def _spaced(text: str) -> str:
    return text.replace(" ", SPIECE_PREFIX)


def token_at(encoding: Any, char: int, stop: int, step: int) -> int | None:
    """The token holding character ``char``, or the next one that has a token in direction ``step``
    before reaching ``stop`` (characters absorbed by an added token's lstrip/rstrip belong to none)."""
    while char != stop:
        token = encoding.char_to_token(char)
        if token is not None:
            return token
        char += step
    return None


def spaces_and_lengths_path(data: dict[str, Any]) -> Optional[np.ndarray]:
    """The number of characters each token id covers, when this tokenizer.json (its dummy prefix already taken
    out) can be run the cheap way, with exactly the same ids: its normaliser only turns spaces into "▁" (done
    with str.replace instead: tokenizers runs that Replace as a regular expression), and every character of a
    text is covered by the token ids' own lengths, so the loss masks need no per-token offsets from tokenizers
    (``encode_batch_fast``; converting its byte offsets to characters builds a hash map per text). Together
    that is a third of its CPU time for the Llama-2 / Vicuna SentencePiece tokenizer of LLaVA-1.5.

    That is the SentencePiece layout transformers 4.x's LlamaConverter writes (LLaVA-1.5, Vicuna, Llama-2):
    no pre-tokenizer, a byte-fallback BPE, added tokens that strip nothing and hold no space. Anything else
    (byte-level BPE, lstrip/rstrip tokens as Phi-3's, other normalisers) gives None: the offsets path."""
    if steps_of(data.get("normalizer")) != [{"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_PREFIX}]:
        return None
    if data.get("pre_tokenizer") or data.get("truncation") or data.get("padding"):
        return None
    model = data.get("model") or {}
    vocab = model.get("vocab")
    if (model.get("type") != "BPE" or model.get("byte_fallback") is not True or model.get("dropout")
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or not isinstance(vocab, dict)):
        return None
    added = data.get("added_tokens") or []
    for token in added:
        content = token.get("content")
        if (not isinstance(content, str) or not content or " " in content or SPIECE_PREFIX in content
                or token.get("lstrip") or token.get("rstrip") or token.get("single_word")):
            return None
    byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
    if None in byte_ids or not all(isinstance(i, int) and i >= 0 for i in vocab.values()):
        return None
    table = np.zeros(max([*vocab.values(), *(t["id"] for t in added)]) + 1, dtype=np.int32)
    table[np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))] = np.fromiter(map(len, vocab), dtype=np.int32, count=len(vocab))
    for byte, token_id in enumerate(byte_ids):  # a character the vocabulary lacks becomes its UTF-8 bytes
        table[token_id] = 0 if 0x80 <= byte < 0xC0 else 1  # the first byte token holds the character (see FromLengths)
    for token in added:
        table[token["id"]] = len(token["content"])
    return table


class ByteLengths(NamedTuple):
    table: np.ndarray  # int64 per token id: its UTF-8 byte count
    nfc: bool  # the tokenizer NFC-normalises: only texts that are their own NFC keep their byte positions


# The 256 characters GPT-2's byte-level encoding writes bytes as: printable Latin-1 as itself, the others as 256 + n.
_PRINTABLE_BYTES = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
BYTE_ALPHABET = frozenset(map(chr, _PRINTABLE_BYTES)) | frozenset(chr(256 + n) for n in range(256 - len(_PRINTABLE_BYTES)))
_KEEPING_SPLITS = {"Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"}  # Split behaviours that drop nothing


def byte_level_lengths(data: dict[str, Any]) -> Optional[ByteLengths]:
    """The UTF-8 byte count of each token id, when this tokenizer.json is a byte-level BPE whose tokens cover each
    text's bytes exactly, in order (Llama-3, Qwen2, GPT-2 style): then the token holding a character is the one
    holding its first byte, as tokenizers' offsets say (a token that holds only the middle of a character holds
    none), and no per-token offsets are needed.

    A byte-level token is written in GPT-2's byte alphabet, one character per byte, so its byte count is its
    length; an added token's is its content's UTF-8 length. The layout must drop and add nothing: no normaliser
    but NFC (texts that are not their own NFC go the offsets way, FromByteLengths), pre-tokenizers that only split
    (Split keeping the matches, Digits, Punctuation) and one ByteLevel without a prefix space, no offset trimming,
    a plain BPE, added tokens that strip nothing. Anything else gives None: the offsets path."""
    steps = steps_of(data.get("normalizer"))
    if any(step.get("type") != "NFC" for step in steps):
        return None
    items = steps_of(data.get("pre_tokenizer"))
    levels = [item for item in items if item.get("type") == "ByteLevel"]
    if len(levels) != 1 or levels[0].get("add_prefix_space") or levels[0].get("trim_offsets"):
        return None
    for item in items:
        kind = item.get("type")
        if kind not in ("ByteLevel", "Split", "Digits", "Punctuation") or (kind == "Split" and item.get("behavior") not in _KEEPING_SPLITS):
            return None
    for item in steps_of(data.get("post_processor")):
        if item.get("type") == "ByteLevel" and item.get("trim_offsets"):
            return None
    if data.get("truncation") or data.get("padding"):
        return None
    model = data.get("model") or {}
    vocab = model.get("vocab")
    if (model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
            or model.get("byte_fallback") or not isinstance(vocab, dict) or not vocab):
        return None
    try:
        ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    except (TypeError, ValueError):
        return None
    if ids.min() < 0 or not set("".join(vocab)) <= BYTE_ALPHABET:  # every token is bytes in GPT-2's alphabet
        return None
    added = data.get("added_tokens") or []
    for token in added:
        content = token.get("content")
        if (not isinstance(content, str) or not content or not isinstance(token.get("id"), int) or token["id"] < 0
                or token.get("lstrip") or token.get("rstrip") or token.get("single_word")):
            return None
    table = np.zeros(max([int(ids.max()), *(t["id"] for t in added)]) + 1, dtype=np.int64)
    table[ids] = np.fromiter(map(len, vocab), dtype=np.int64, count=len(vocab))
    for token in added:
        table[token["id"]] = len(token["content"].encode("utf-8"))
    return ByteLengths(table, bool(steps))


class Encoded:
    """The token ids of a batch of texts, one text after the other: text ``k`` is ``ids[starts[k]:starts[k + 1]]``."""

    ids: np.ndarray  # int32
    starts: np.ndarray  # int64, one more than texts

    def tokens_at(self, texts: np.ndarray, chars: np.ndarray, stops: np.ndarray, step: int) -> np.ndarray:
        """``token_at`` for many queries at once (character positions of the texts as given): the index within
        its text of the token holding the character (or the next one that has a token, in direction ``step``,
        before ``stop``), or -1."""
        raise NotImplementedError


def _flat_ids(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids in lists], out=starts[1:])
    return np.fromiter(chain.from_iterable(lists), dtype=np.int32, count=int(starts[-1])), starts


class WithOffsets(Encoded):
    """From tokenizers' encodings with character offsets (any tokenizer)."""

    def __init__(self, encoded: list[tuple[Any, int]]):
        self.encodings = encoded
        self.ids, self.starts = _flat_ids([encoding.ids for encoding, _ in encoded])

    def tokens_at(self, texts: np.ndarray, chars: np.ndarray, stops: np.ndarray, step: int) -> np.ndarray:
        found = []
        for text, char, stop in zip(texts.tolist(), chars.tolist(), stops.tolist()):
            encoding, shift = self.encodings[text]
            token = token_at(encoding, char + shift, stop + shift, step)
            found.append(-1 if token is None else token)
        return np.array(found, dtype=np.int64)


class FromLengths(Encoded):
    """From the ids alone, each token covering as many characters as the table says (spaces_and_lengths_path).

    A character the vocabulary lacks is several byte tokens; tokenizers gives each of them the character's range,
    so ``char_to_token`` finds the first: here the first byte token covers the character and the others none.
    TextTokenizer checks that convention against tokenizers' own offsets once, when it is built."""

    @classmethod
    def build(cls, encodings: list[Any], texts: list[str], shifts: list[int], table: np.ndarray) -> Optional["FromLengths"]:
        """None if some text is not covered exactly by its tokens' lengths (the table does not fit the tokenizer)."""
        self = cls()
        self.ids, self.starts = _flat_ids([encoding.ids for encoding in encodings])
        if len(self.ids) and int(self.ids.max()) >= len(table):
            return None
        self.ends = np.cumsum(table[self.ids], dtype=np.int64)  # each token's end, characters of all texts counted
        self.text_starts = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in texts], out=self.text_starts[1:])
        if not np.array_equal(np.concatenate(([0], self.ends))[self.starts], self.text_starts):
            return None
        self.shifts = np.array(shifts, dtype=np.int64)
        return self

    def tokens_at(self, texts: np.ndarray, chars: np.ndarray, stops: np.ndarray, step: int) -> np.ndarray:
        # Every character is some token's: the walk of token_at never moves, so only char == stop finds nothing.
        found = np.searchsorted(self.ends, self.text_starts[texts] + self.shifts[texts] + chars, side="right") - self.starts[texts]
        return np.where(chars == stops, -1, found)


class FromByteLengths(WithOffsets):
    """From tokenizers' encodings of a byte-level BPE, each character's token found from the tokens' UTF-8 byte
    lengths (byte_level_lengths) with numpy rather than by one ``char_to_token`` per query. Built on the
    encodings with offsets (``encode_batch``: for byte-level BPE tokenizers 0.23's ``encode_batch_fast`` is
    slower, measured), so a batch the lengths do not account for falls back on the very same encodings.

    A token ends at a byte; the characters it holds are those whose first byte it holds, so a character split over
    several tokens belongs to the first, and a token holding only continuation bytes holds none, as tokenizers'
    offsets say (checked against them once per tokenizer, on BYTE_LEVEL_PROBE)."""

    @classmethod
    def build(cls, encoded: list[tuple[Any, int]], texts: list[str], lengths: ByteLengths) -> Optional["FromByteLengths"]:
        """None if some text is not covered exactly by its tokens' byte lengths, or, for an NFC-normalising
        tokenizer, is not its own NFC (its bytes move): the caller then uses the offsets."""
        self = cls(encoded)
        table = lengths.table
        if len(self.ids) and int(self.ids.max()) >= len(table):
            return None
        joined = "".join(texts)
        text_starts = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in texts], out=text_starts[1:])
        byte_ends = np.cumsum(table[self.ids])  # each token's end in bytes, all texts counted
        if joined.isascii():  # a byte is a character: positions are the same
            char_ends, byte_starts = byte_ends, text_starts
        else:
            if lengths.nfc and not all(t.isascii() or unicodedata.is_normalized("NFC", t) for t in texts):
                return None
            utf8 = np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)
            first = (utf8 & 0xC0) != 0x80  # the first byte of a character
            chars_before = np.concatenate(([0], np.cumsum(first)))  # characters starting before each byte position
            char_ends = chars_before[np.minimum(byte_ends, len(utf8))]
            byte_starts = np.append(np.flatnonzero(first), len(utf8))[text_starts]
        if not np.array_equal(np.concatenate(([0], byte_ends))[self.starts], byte_starts):
            return None
        self.ends, self.text_starts, self.shifts = char_ends, text_starts, np.zeros(len(texts), dtype=np.int64)
        return self

    tokens_at = FromLengths.tokens_at  # the same search: each token's end, in characters of all texts counted
