"""routing.json's numbers equal a hand computation (numpy, loops, sets) from the router logits of every sample.

The router logits are read with plain forward hooks on the routers; the hand computation applies the routing
rule itself (softmax, MoIIE's modality mask, top-k) and counts, so it shares no code with mmzoo.analysis or
the training tap.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

SHORT = [(re.compile(r"language_model\.layers\.(\d+)\."), "text.{}"), (re.compile(r"vision_tower\..*layers\.(\d+)\."), "vision.{}"),
         (re.compile(r"multi_modal_projector\."), "projector")]


def short(name: str) -> str:
    for pattern, template in SHORT:
        match = pattern.search(name)
        if match:
            return template.format(*match.groups())
    raise AssertionError(name)


def router_logits(ws, path):
    """Per sample: input_ids, and each MoE layer's router logits [tokens, E] (model order)."""
    import torch

    from mmzoo import load_model, load_processor
    from mmzoo.preprocess import H5Dataset

    model = load_model(path)
    routers = [(n, m) for n, m in model.named_modules() if re.search(r"(mlp|multi_modal_projector)\.gate\Z", n)]
    assert routers
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _args, out):  # transformers' routers return (logits, weights, indices); mmzoo's the logits
            logits = out[0] if isinstance(out, tuple) else out
            captured[short(name)] = logits.detach().float().reshape(-1, logits.shape[-1])
        return hook

    for name, module in routers:
        module.register_forward_hook(keep(name))
    dataset = H5Dataset(ws.data, ws.images, load_processor(path).image_processor)
    samples = []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            captured.clear()
            model(input_ids=item["input_ids"][None], pixel_values=item["pixel_values"])
            samples.append((item["input_ids"].numpy(), {k: v.numpy().astype(np.float64) for k, v in captured.items()}))
    return model, samples


def hand_statistics(samples, image_token_id, top_k, forbidden):
    """Load, load by modality, entropy and overlaps, by hand. ``forbidden``: modality -> experts it may not use."""
    counts, entropy, tokens, overlap = {}, {}, {}, {}
    for input_ids, layers in samples:
        text_image = input_ids == image_token_id
        choices = {}
        for layer, logits in layers.items():
            n_tokens, experts = logits.shape
            is_image = text_image if layer.startswith("text.") else np.ones(n_tokens, bool)
            c = counts.setdefault(layer, {"text": np.zeros(experts), "image": np.zeros(experts)})
            h = entropy.setdefault(layer, {"text": 0.0, "image": 0.0})
            t = tokens.setdefault(layer, {"text": 0, "image": 0})
            chosen = []
            for row in range(n_tokens):
                modality = "image" if is_image[row] else "text"
                scores = logits[row].copy()
                for e in forbidden.get(modality, []):
                    scores[e] = -np.inf
                p = np.exp(scores - scores.max())
                p /= p.sum()
                top = set(np.argsort(-p)[:top_k].tolist())
                for e in top:
                    c[modality][e] += 1
                h[modality] += -sum(q * math.log(q) for q in p if q > 0)
                t[modality] += 1
                chosen.append(top)
            choices[layer] = chosen
        names = list(layers)
        for a, b in zip(names, names[1:]):
            if a.split(".")[0] == b.split(".")[0]:
                pair = overlap.setdefault((a, b), [0.0, 0])
                pair[0] += sum(len(x & y) / top_k for x, y in zip(choices[a], choices[b]))
                pair[1] += len(choices[a])
    return counts, entropy, tokens, overlap


@pytest.mark.parametrize("layout", ["mixtral-hf", "moiie", "towers"])
def test_routing_json_equals_hand_computation(ws, layout):
    from mmzoo import read_checkpoint
    from mmzoo.analysis import analyze_routing

    path = ws.moe(layout)
    moe = read_checkpoint(path).spec.moe
    assignment = moe.get("modality_experts")
    forbidden = {"text": assignment["image"], "image": assignment["text"]} if assignment else {}
    model, samples = router_logits(ws, path)
    counts, entropy, tokens, overlap = hand_statistics(samples, model.config.image_token_id, moe["top_k"], forbidden)

    out = ws.root / f"numbers-{layout}"
    report = analyze_routing(path, ws.data, out, samples=1000)  # more than there are: all 8 samples
    assert report == json.loads((out / "routing.json").read_text())
    assert report["samples"] == len(samples) == 8
    assert list(report["layers"]) == list(counts)
    for layer, stats in report["layers"].items():
        c, h, t = counts[layer], entropy[layer], tokens[layer]
        total = c["text"] + c["image"]
        assert stats["tokens"] == t
        assert stats["assignments"] == int(total.sum()) == moe["top_k"] * (t["text"] + t["image"])
        assert stats["load"] == pytest.approx((total / total.sum()).tolist(), abs=1e-6)
        for m in ("text", "image"):
            if t[m]:
                assert stats["load_by_modality"][m] == pytest.approx((c[m] / c[m].sum()).tolist(), abs=1e-6)
                assert stats["entropy_by_modality"][m] == pytest.approx(h[m] / t[m], abs=1e-5)
            else:
                assert stats["load_by_modality"][m] is None and stats["entropy_by_modality"][m] is None
        assert stats["entropy"] == pytest.approx((h["text"] + h["image"]) / (t["text"] + t["image"]), abs=1e-5)
        assert stats["max_entropy"] == pytest.approx(math.log(len(total)), abs=1e-6)
        if t["text"] and t["image"]:
            expected = np.minimum(c["text"] / c["text"].sum(), c["image"] / c["image"].sum()).sum()
            assert stats["modality_overlap"] == pytest.approx(expected, abs=1e-5)
        else:
            assert stats["modality_overlap"] is None
        assert 0.0 < stats["entropy"] < stats["max_entropy"]  # routers with std 0.5: neither one-hot nor uniform
    assert {(o["from"], o["to"]) for o in report["layer_overlap"]} == set(overlap)
    for item in report["layer_overlap"]:
        total, n = overlap[(item["from"], item["to"])]
        assert item["tokens"] == n
        assert item["overlap"] == pytest.approx(total / n, abs=1e-6)
        assert item["chance"] == pytest.approx(moe["top_k"] / report["layers"][item["from"]]["experts"])
    if layout == "moiie":  # modality experts: text tokens never reach image-only experts and the reverse
        for stats in report["layers"].values():
            assert all(stats["load_by_modality"]["text"][e] == 0 for e in assignment["image"])
            assert all(stats["load_by_modality"]["image"][e] == 0 for e in assignment["text"])
            assert sum(stats["load_by_modality"]["image"][e] for e in assignment["image"]) > 0
    if layout == "towers":  # vision and projector experts route image tokens only
        assert {"vision.0", "vision.1", "projector"} <= set(report["layers"])
        assert report["layers"]["vision.0"]["tokens"]["text"] == 0
        assert ("vision.0", "vision.1") in overlap
