"""Fixtures for the upcycling tests: dense tiny LLaVA folders, their inputs (with images) and logits."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

_counter = itertools.count()


class Dense:
    """A dense hf checkpoint with fixed inputs (two images) and the dense model's float32 logits."""

    def __init__(self, path: Path):
        import torch
        from transformers import LlavaForConditionalGeneration

        from mmzoo.demo.tiny import sample_inputs

        self.path = path
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        self.config = model.config
        self.inputs = sample_inputs(model, n_images=2, seq_text=5)
        with torch.no_grad():
            self.logits = model(**self.inputs).logits


# dense LLMs Mixtral / Qwen2-MoE cannot express exactly once upcycled (hf output needs mmzoo's remote code)
VARIANTS = {
    "llama-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "phi3-partial": ("phi3", dict(partial_rotary_factor=0.5)),
}


def build_variant(out: Path, variant: str) -> Path:
    """A tiny hf Llava whose LLM has non-default features (biases, partial rotary), every bias non-zero."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from mmzoo.demo.tiny import CHAT_TEMPLATE, IMAGE_TOKEN, image_processor, make_tokenizer, text_config, vision_config

    arch, overrides = VARIANTS[variant]
    tokenizer = make_tokenizer()
    torch.manual_seed(1)
    vcfg = vision_config("clip")
    config = LlavaConfig(vision_config=vcfg, text_config=text_config(arch, vocab_size=len(tokenizer), **overrides),
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=16)
    model = LlavaForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and ("bias" in name or "norm" in name or "layrnorm" in name):
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    LlavaProcessor(image_processor=image_processor("clip", vcfg.image_size), tokenizer=tokenizer, patch_size=vcfg.patch_size,
                   num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def dense(tiny, tmp_path_factory):
    cache: dict[str, Dense] = {}

    def get(arch: str = "llama") -> Dense:
        if arch not in cache:
            if arch in VARIANTS:
                path = build_variant(tmp_path_factory.mktemp(arch) / "hf", arch)
            else:  # "llama", or "qwen2-siglip" (LLM-vision)
                path = tiny.hf(*arch.split("-"))
            cache[arch] = Dense(path)
        return cache[arch]

    return get


@pytest.fixture()
def out(tmp_path):
    def make(name: str = "out") -> Path:
        return tmp_path / f"{name}-{next(_counter)}"

    return make
