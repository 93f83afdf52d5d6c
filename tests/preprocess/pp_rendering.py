"""An independent, hand-written rendering of each template (deliberately not using mmzoo's code),
plus helpers to compare it with what the shards hold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

N_IMG = 4  # image tokens per image in most tests


def conv(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": role, "value": value} for role, value in turns]


# Good samples covering unicode, multi-turn, multi-image, text-only and system turns.
GOOD = [
    {"id": "single", "image": "img_000.png", "conversations": conv(("human", "<image>\nWhat is shown?"), ("gpt", "A cat on a red sofa."))},
    {"id": "unicode", "image": ["sub/img_000.png"], "conversations": conv(("human", "Décris l'image <image> 数字 🙂"), ("gpt", "Ünïcödé: 一只猫 🐈 ok"))},
    {"id": "multiturn", "image": "img_001.png", "conversations": conv(
        ("human", "<image>\nWhere is the dog?"), ("gpt", "In the park."), ("human", "What color?"), ("gpt", "Brown."),
        ("human", "And the ball?"), ("gpt", "It is red."))},
    {"id": "multiimage", "image": ["img_002.png", "img_003.png"], "conversations": conv(
        ("human", "<image>\n<image>\nCompare the two pictures."), ("gpt", "The first is darker."))},
    {"id": "textonly", "conversations": conv(("human", "hello there"), ("gpt", "hi! how can I help?"))},
    {"id": "system", "image": "img_000.png", "conversations": conv(
        ("system", "You are terse."), ("human", "<image> Describe."), ("gpt", "A bowl."), ("human", "More?"), ("gpt", "Fruit."))},
    {"id": 17, "conversations": conv(("human", "numeric id"), ("gpt", "fine"))},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path



VICUNA_SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
LLAMA3_SYS = ("You are a helpful language and vision assistant. You are able to understand the visual content that the user "
              "provides, and assist the user with a variety of tasks using natural language.")


def llava_placement(value: str) -> str:
    """LLaVA's preprocess_multimodal, written out: markers first, each with a newline, text stripped."""
    n = value.count("<image>")
    return ("<image>\n" * n + value.replace("<image>", "").strip()).strip() if n else value


def expected(template: str, turns: list[dict[str, str]], placement: str = "llava") -> tuple[str, list[str]]:
    """(full text with one <image> per image, list of trained strings in order)."""
    if placement == "llava" and any("<image>" in t["value"] for t in turns):
        turns = [dict(t, value=llava_placement(t["value"])) for t in turns]
    system = turns[0]["value"] if turns[0]["from"] == "system" else None
    body = turns[1:] if system is not None else turns
    pairs = [(body[i]["value"], body[i + 1]["value"]) for i in range(0, len(body) - 1, 2)]
    text, loss = "", []
    if template == "plain":
        text = "<s>"  # LLaVA's preprocess_plain: BOS, image, caption + "\n"
        for q, a in pairs:
            text += "<image>" * q.count("<image>") + a + "\n"
            loss.append(a + "\n")
        return text, loss
    if template == "vicuna_v1":
        text = "<s>" + (system if system is not None else VICUNA_SYS) + " "
        for q, a in pairs:
            text += f"USER: {q} ASSISTANT: {a}</s>"
            loss.append(f" {a}</s>")  # LLaVA trains from the space after "ASSISTANT:" (part of "▁{a}")
        return text, loss
    if template == "llama3":
        s = system if system is not None else LLAMA3_SYS
        text = f"<s><|start_header_id|>system<|end_header_id|>\n\n{s}<|eot_id|>"
        for q, a in pairs:
            text += (f"<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
                     f"<|start_header_id|>assistant<|end_header_id|>\n\n{a}<|eot_id|>")
            loss.append(f"{a}<|eot_id|>")
        return text, loss
    if template == "phi3":
        text = "<s>" + (f"<|system|>\n{system}<|end|>\n" if system is not None else "")
        for q, a in pairs:
            text += f"<|user|>\n{q}<|end|>\n<|assistant|>\n{a}<|end|>\n"
            loss.append(f"{a}<|end|>")
        return text, loss
    if template in ("chatml", "qwen"):
        s = system if system is not None else ("You are a helpful assistant." if template == "qwen" else None)
        text = f"<|im_start|>system\n{s}<|im_end|>\n" if s is not None else ""
        for q, a in pairs:
            text += f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
            loss.append(f"{a}<|im_end|>")
        return text, loss
    if template == "auto":  # mmzoo.demo.tiny.CHAT_TEMPLATE, written out by hand
        text = f"{system}\n" if system is not None else ""
        for q, a in pairs:
            text += f"USER: {q}\nASSISTANT: {a}</s>\n"
            loss.append(f" {a}</s>")
        return text, loss
    raise AssertionError(template)


def image_runs(ids: np.ndarray, image_id: int) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of image tokens."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == image_id:
            j = i
            while j < len(ids) and ids[j] == image_id:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def collapse(ids: np.ndarray, image_id: int, n: int) -> list[int]:
    """Replace each image span of n tokens by one image token (spans may be adjacent)."""
    out, i = [], 0
    ids = ids.tolist()
    while i < len(ids):
        if ids[i] == image_id:
            assert ids[i: i + n] == [image_id] * n, "image span shorter than num_image_tokens"
            out.append(image_id)
            i += n
        else:
            out.append(ids[i])
            i += 1
    return out


def read_shards(out) -> list[dict]:
    """Every sample of an mmzoo output, read with h5py directly (not the mmzoo reader)."""
    import json

    import h5py

    manifest = json.loads((out / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        with h5py.File(out / shard["file"], "r") as f:
            offsets, img_off = f["offsets"][:], f["image_offsets"][:]
            ids, mask = f["input_ids"][:], f["loss_mask"][:]
            paths, sids = f["image_paths"].asstr()[:], f["sample_ids"].asstr()[:]
            for i in range(len(offsets) - 1):
                a, b = offsets[i], offsets[i + 1]
                samples.append({"id": sids[i], "ids": ids[a:b], "mask": mask[a:b],
                                "images": list(paths[img_off[i]: img_off[i + 1]])})
    return samples
