"""Tiny real models, tokenizers and images built in-process, for the demo and the tests (no downloads).

Every builder is deterministic given its seed. Configs use non-default values where a converter
could silently fall back to a default (rope theta, rms eps), so a lost field shows up as wrong logits.
"""
from __future__ import annotations

from pathlib import Path

TEXT_ARCHS = ("llama", "mistral", "qwen2", "phi3")
VISION_ARCHS = ("clip", "siglip")
IMAGE_TOKEN = "<image>"

_CORPUS = [
    "A photo of a cat sitting on a red sofa next to a window.",
    "Two dogs are playing with a ball in the park on a sunny day.",
    "What is shown in the image? The image shows a bowl of fruit.",
    "Describe the picture in detail. A small boat floats on a calm lake at sunset.",
    "USER: Where is the man standing? ASSISTANT: He is standing near the bus stop.",
    "The quick brown fox jumps over the lazy dog. Ünïcödé text, 数字 123 and emoji 🙂.",
    "system: You are a helpful assistant. user: hello assistant: hi there!",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }}\n"
    "{% else %}ASSISTANT: {{ message['content'] }}</s>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def make_tokenizer(vocab_size: int = 320, with_image_token: bool = True):
    """A byte-level BPE tokenizer trained on a tiny corpus, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    if with_image_token:
        fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return fast


def text_config(arch: str, vocab_size: int, **overrides):
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    common.update(overrides)
    config = AutoConfig.for_model(arch, **common)
    config.rope_parameters = {**(config.rope_parameters or {}), "rope_type": "default", "rope_theta": 500000.0}
    return config


def vision_config(arch: str, **overrides):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    common.update(overrides)
    if arch == "clip":
        return CLIPVisionConfig(projection_dim=16, **common)
    if arch == "siglip":
        return SiglipVisionConfig(**common)
    raise ValueError(f"unknown vision arch {arch}")


def image_processor(arch: str, image_size: int = 32):
    if arch == "clip":
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    from transformers import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def _randomize_norms(model, seed: int) -> None:
    """Norm weights start at exactly 1; perturb them so a swapped or dropped norm changes logits."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and ("norm" in name or "layrnorm" in name):
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)


def build_llava(out: Path, text_arch: str = "llama", vision_arch: str = "clip", seed: int = 0, dtype: str = "float32", tokenizer=None):
    """Save a tiny LlavaForConditionalGeneration + LlavaProcessor with transformers itself."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = tokenizer or make_tokenizer()
    _seeded(seed)
    vcfg = vision_config(vision_arch)
    tcfg = text_config(text_arch, vocab_size=len(tokenizer))
    config = LlavaConfig(
        vision_config=vcfg,
        text_config=tcfg,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default" if vision_arch == "clip" else "full",
        image_seq_length=(vcfg.image_size // vcfg.patch_size) ** 2,
    )
    model = LlavaForConditionalGeneration(config).eval()
    _randomize_norms(model, seed)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    processor = LlavaProcessor(
        image_processor=image_processor(vision_arch, vcfg.image_size),
        tokenizer=tokenizer,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if vision_arch == "clip" else 0,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return model


def build_llm(out: Path, arch: str = "llama", seed: int = 0, tokenizer=None, dtype: str = "float32"):
    """Save a tiny causal LM with its tokenizer (no image token: `mmzoo init` adds it)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or make_tokenizer(with_image_token=False)
    _seeded(seed)
    model = AutoModelForCausalLM.from_config(text_config(arch, vocab_size=len(tokenizer))).eval()
    _randomize_norms(model, seed)
    model.to(getattr(torch, dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def build_vision(out: Path, arch: str = "clip", seed: int = 0, dtype: str = "float32"):
    """Save a tiny CLIP/SigLIP vision model with its image processor."""
    import torch
    from transformers import CLIPVisionModel, SiglipVisionModel

    _seeded(seed)
    cls = CLIPVisionModel if arch == "clip" else SiglipVisionModel
    cfg = vision_config(arch)
    model = cls(cfg).eval()
    _randomize_norms(model, seed)
    model.to(getattr(torch, dtype)).save_pretrained(out)
    image_processor(arch, cfg.image_size).save_pretrained(out)
    return model


def make_images(folder: Path, count: int = 4, size: int = 40, seed: int = 0) -> list[Path]:
    """Small deterministic PNGs (gradients + noise) so every image is different."""
    import random

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        img = Image.new("RGB", (size, size))
        img.putdata([((x * 7 + i * 40) % 256, (y * 5 + rng.randrange(64)) % 256, (x * y + i) % 256) for y in range(size) for x in range(size)])
        path = folder / f"img_{i:03d}.png"
        img.save(path)
        paths.append(path)
    return paths


def sample_inputs(model_or_config, tokenizer=None, n_images: int = 1, seq_text: int = 6, seed: int = 0):
    """input_ids with image placeholders expanded, plus pixel_values, for logit comparisons."""
    import torch

    config = getattr(model_or_config, "config", model_or_config)
    vcfg = config.vision_config
    per_image = (vcfg.image_size // vcfg.patch_size) ** 2
    if getattr(config, "vision_feature_select_strategy", "default") == "full" and vcfg.model_type == "clip_vision_model":
        per_image += 1
    gen = torch.Generator().manual_seed(seed)
    vocab = config.text_config.vocab_size
    ids = []
    for _ in range(n_images):
        ids += [config.image_token_id] * per_image
        ids += torch.randint(5, vocab - 2, (seq_text,), generator=gen).tolist()
    ids = [t if t != config.image_token_id or i < n_images * (per_image + seq_text) else 5 for i, t in enumerate(ids)]
    input_ids = torch.tensor([ids])
    pixel_values = torch.randn(n_images, vcfg.num_channels, vcfg.image_size, vcfg.image_size, generator=gen)
    return {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}


CAPTIONS = ["A red sofa with a cat.", "Two dogs play in the park.", "A bowl of fruit on a table.", "A boat on a calm lake."]
HALLUCINATIONS = ["A green car in the snow.", "Three birds sit on a wire.", "A clock on a brick wall.", "A kite over the beach."]


def make_caption_dataset(folder: Path, checkpoint: Path, samples: int = 8) -> tuple[Path, Path]:
    """Four images, ``samples`` one-turn caption conversations, preprocessed with the plain template
    and ``checkpoint``'s tokenizer. Returns (image folder, preprocessed folder)."""
    import json

    from ..preprocess import preprocess

    images = folder / "images"
    make_images(images, 4)
    rows = [{"id": f"s{i}", "image": f"img_{i % 4:03d}.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": CAPTIONS[i % 4]}]}
        for i in range(samples)]
    (folder / "data.json").write_text(json.dumps(rows))
    data = folder / "data"
    preprocess([folder / "data.json"], images, checkpoint, data, template="plain", model=checkpoint, max_seq_len=128)
    return images, data


def make_preference_dataset(folder: Path, checkpoint: Path, pairs: int = 8, images: Path | None = None) -> Path:
    """``pairs`` RLAIF-V-style records (question, chosen = the image's caption, rejected = a hallucinated one)
    over the four images of ``images`` (made in ``folder/images`` when None), preprocessed with ``--kind
    preference`` and ``checkpoint``'s tokenizer. Returns the preprocessed folder."""
    import json

    from ..preprocess import preprocess

    if images is None:
        images = folder / "images"
        make_images(images, 4)
    rows = [{"idx": f"p{i}", "image": f"img_{i % 4:03d}.png", "question": "Describe the picture.",
             "chosen": CAPTIONS[i % 4], "rejected": HALLUCINATIONS[i % 4]} for i in range(pairs)]
    (folder / "pairs.json").write_text(json.dumps(rows))
    data = folder / "pairs"
    preprocess([folder / "pairs.json"], images, checkpoint, data, kind="preference", model=checkpoint, max_seq_len=128)
    return data
