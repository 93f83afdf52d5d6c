"""A deterministic corpus of LLaVA conversations for comparing mmzoo preprocess with the reference
implementations: LLaVA-665k-shaped samples (``kind: llava``) and odd ones (``kind: odd``: whitespace
at turn edges, empty answers, a conversation starting with the assistant, separators and special
tokens inside the text, several images, ...)."""
from __future__ import annotations

import random

WORDS = ("the a cat dog red blue sofa park ball man woman child table window street car tree sky cloud two three "
         "small large old new bright dark wooden metal sitting standing running near behind under next to on in "
         "with holding looking at picture image photo scene background foreground left right top bottom").split()
QUESTIONS = ["What is shown in the image?", "Describe the image in detail.", "What color is the {w}?",
             "How many {w}s are there?", "Where is the {w}?", "What is the {w} doing?", "Is there a {w} in the picture?",
             "Why might the {w} be here?", "What can you infer about the {w}?", "Answer briefly: what is on the {w}?"]
UNICODE = ["Décris l'image, s'il te plaît.", "这张图片里有什么？", "Что изображено на картинке?", "画像を説明してください 🙂",
           "¿Qué hay en la foto? ñandú", "Ünïcödé ümläuts ß and emoji 🐈‍⬛ 👍🏽", "数字 12345 and 3.14159", "مرحبا بالعالم"]


def _sentence(rng: random.Random, low: int = 4, high: int = 14) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return (" ".join(words)).capitalize() + rng.choice([".", ".", "!", "?", "..."])


def _answer(rng: random.Random, long: bool = False) -> str:
    count = rng.randint(12, 30) if long else rng.randint(1, 3)
    parts = [_sentence(rng) for _ in range(count)]
    if long and rng.random() < 0.5:
        parts = ["\n\n".join(parts[i: i + 4]) for i in range(0, len(parts), 4)]
    return " ".join(parts)


def _question(rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(w=rng.choice(WORDS))


def _turns(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def corpus(n_llava: int = 160, seed: int = 0) -> list[dict]:
    """LLaVA-shaped samples, then the odd ones; ids are unique and say what the sample is."""
    rng = random.Random(seed)
    samples: list[dict] = []

    def add(kind: str, name: str, pairs: list[tuple[str, str]], image: bool, **extra) -> None:
        row = {"id": f"{kind}-{len(samples):03d}-{name}", "kind": kind, "conversations": _turns(pairs), **extra}
        if image:
            row["image"] = f"img_{len(samples) % 4:03d}.png"
        samples.append(row)

    for i in range(n_llava):
        shape = i % 8
        rounds = 1 if shape in (0, 1, 5) else rng.randint(2, 6)
        pairs = [(_question(rng), _answer(rng, long=shape == 4 and r == 0)) for r in range(rounds)]
        q0 = pairs[0][0]
        if shape == 6:  # text-only (LLaVA-665k has ~40k of them)
            add("llava", "text", pairs, image=False)
            continue
        if shape == 7:
            pairs[0] = (rng.choice(UNICODE), pairs[0][1] + " " + rng.choice(UNICODE))
        # the image marker at the start (most of LLaVA-665k), at the end, or in the middle of the first turn
        place = ["start", "start", "end", "middle"][i % 4]
        if place == "start":
            q0 = "<image>\n" + pairs[0][0]
        elif place == "end":
            q0 = pairs[0][0] + "\n<image>"
        else:
            words = pairs[0][0].split(" ")
            q0 = " ".join(words[:1] + ["<image>"] + words[1:])
        pairs[0] = (q0, pairs[0][1])
        add("llava", f"image-{place}", pairs, image=True)

    odd = [
        ("trailing-space-answer", [("<image>\nWhat is it?", "A cat. ")], True),
        ("leading-space-answer", [("<image>\nWhat is it?", " A cat.")], True),
        ("newline-edges", [("<image>\nWhat is it?\n", "\nA cat.\n")], True),
        ("space-edges-question", [("  What is it?  ", "Nothing.")], False),
        ("answer-starts-with-newline", [("<image>\nDescribe.", "\n\nFirst line.\nSecond line.")], True),
        ("answer-is-punctuation", [("<image>\nReact.", "!!!")], True),
        ("answer-is-number", [("<image>\nHow many?", "3")], True),
        ("empty-answer", [("<image>\nWhat is it?", "")], True),
        ("whitespace-answer", [("<image>\nWhat is it?", "   ")], True),
        ("empty-second-answer", [("<image>\nWhat is it?", "A cat."), ("And?", "")], True),
        ("eos-in-answer", [("<image>\nWhat is it?", "A cat.</s>Then more.")], True),
        ("eos-in-question", [("<image>\nWhat does </s> mean?", "It ends a sequence.")], True),
        ("bos-in-answer", [("What is <s>?", "The <s> token starts a text.")], False),
        ("separator-in-answer", [("<image>\nRepeat after me.", "USER: hi ASSISTANT: hello")], True),
        ("separator-in-question", [("<image>\nWhat does ' ASSISTANT: ' mean?", "A role label.")], True),
        ("role-words", [("USER: ASSISTANT:", "ASSISTANT: USER:")], False),
        ("image-alone", [("<image>", "A picture of a cat.")], True),
        ("image-twice-same-turn", [("<image>\n<image>\nCompare.", "They are similar.")], True),
        ("image-in-second-turn", [("Hello.", "Hi."), ("<image>\nAnd this?", "A dog.")], True),
        ("tabs-and-crlf", [("<image>\nTabs\there\r\nand CRLF.", "Ok\tthen.\r\n")], True),
        ("long-multiturn", [(_question(rng), _answer(rng, long=True)) for _ in range(4)], False),
        ("unicode-only", [("<image>\n" + UNICODE[1], UNICODE[3])], True),
        ("literal-spiece", [("<image>\nWhat is \u2581?", "The \u2581 is SentencePiece's space.")], True),
    ]
    for name, pairs, image in odd:
        if name == "image-twice-same-turn":
            row = {"id": f"odd-{len(samples):03d}-{name}", "kind": "odd", "conversations": _turns(pairs), "image": ["img_000.png", "img_001.png"]}
            samples.append(row)
            continue
        add("odd", name, pairs, image=image)
    samples.append({"id": f"odd-{len(samples):03d}-starts-with-assistant", "kind": "odd", "image": "img_000.png",
                    "conversations": [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "<image>\nWhat is it?"},
                                      {"from": "gpt", "value": "A cat."}]})
    # more odd samples drawn at random: whitespace at every edge of every turn
    for _ in range(20):
        pairs = [(_question(rng), _answer(rng)) for _ in range(rng.randint(1, 3))]
        pairs = [(rng.choice(["", " ", "\n", "  "]) + q + rng.choice(["", " ", "\n"]), rng.choice(["", " ", "\n"]) + a + rng.choice(["", " ", "\n", " \n"]))
                 for q, a in pairs]
        pairs[0] = ("<image>\n" + pairs[0][0], pairs[0][1])
        add("odd", "random-edges", pairs, image=True)
    return samples
