"""Files a checkpoint carries that transformers parses itself (tokenizer files, processor config, rope settings),
and what `mmzoo generate` is given (prompts, images, lengths): a broken or hostile one is one line, exit 2.
Each case used to end in a traceback from inside transformers, or never ended."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from robust_helpers import assert_one_line, run_main


def _edit(path, change):
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


@pytest.mark.parametrize("name, change, needle", [
    ("tokenizer.json", lambda d: [1], "TypeError"),
    ("tokenizer_config.json", lambda d: [1], "AttributeError"),
    ("tokenizer_config.json", lambda d: {**d, "added_tokens_decoder": {"5": 7}}, "added_tokens_decoder"),
    ("config.json", lambda d: {**d, "text_config": {**d["text_config"], "rope_scaling": {"rope_type": "evil", "factor": 2.0}}},
     "KeyError: 'evil'"),
], ids=["tokenizer-json-list", "tokenizer-config-list", "added-tokens-decoder", "unknown-rope-type"])
def test_files_transformers_parses_are_one_line(hf_copy, capsys, name, change, needle):
    _edit(hf_copy / name, change)
    line = assert_one_line(*run_main(capsys, "generate", hf_copy, "--prompt", "hi", "--max-new-tokens", "1"),
                           str(hf_copy), "transformers cannot load", needle)
    assert "Traceback" not in line


def test_a_tokenizer_json_with_a_5000_digit_integer(hf_copy, capsys):
    path = hf_copy / "tokenizer.json"
    path.write_text(path.read_text().replace("{", '{"x": ' + "9" * 5000 + ",", 1))
    assert_one_line(*run_main(capsys, "generate", hf_copy, "--prompt", "hi", "--max-new-tokens", "1"),
                    "transformers cannot load its tokenizer and processor files", "4300 digits")


def test_a_processor_config_naming_another_class(hf_copy, capsys):
    _edit(hf_copy / "processor_config.json", lambda d: {**d, "processor_class": "os.system"})
    assert_one_line(*run_main(capsys, "generate", hf_copy, "--prompt", "hi", "--max-new-tokens", "1"),
                    "processor files load as", "not a processor with a tokenizer and an image processor")


def test_generate_refuses_lengths_past_the_context(tiny, capsys):
    """--max-new-tokens 10^12 generated until killed; a prompt longer than the context is refused before the forward."""
    from mmzoo.errors import MmzooError
    from mmzoo.generate import generate

    assert_one_line(*run_main(capsys, "generate", tiny.hf(), "--prompt", "hi", "--max-new-tokens", str(10**12)),
                    "--max-new-tokens 1,000,000,000,000 is more than the model's context of 512 tokens")
    with pytest.raises(MmzooError, match="the prompt is [0-9,]+ tokens, more than the model's context of 512"):
        generate(tiny.hf(), "a " * 5000, max_new_tokens=1)


def test_generate_refuses_bombs_broken_and_special_images(tiny, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 M pixels in 50 KB: past PIL's decompression-bomb limit
    assert bomb.stat().st_size < 100_000
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (32, 32), "red").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    for image, needle in ((bomb, "DecompressionBombError"), (truncated, "not a readable image")):
        assert_one_line(*run_main(capsys, "generate", tiny.hf(), "--prompt", "hi", "--image", image,
                                  "--max-new-tokens", "1"), str(image), needle)


def test_an_image_token_the_tokenizer_or_vocabulary_does_not_have(hf_copy, capsys, tmp_path):
    """Both were "Image features and image tokens do not match" ValueErrors from inside transformers' forward."""
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), "red").save(image)
    args = ("generate", hf_copy, "--prompt", "hi", "--image", image, "--max-new-tokens", "1")
    _edit(hf_copy / "config.json", lambda d: {**d, "image_token_index": 5})  # a real token, not <image>
    assert_one_line(*run_main(capsys, *args), "config marks images with token id 5, but its tokenizer's <image> is 320")
    _edit(hf_copy / "config.json", lambda d: {**d, "image_token_index": 10**12})
    assert_one_line(*run_main(capsys, *args), str(hf_copy), "image token id 1000000000000 lies outside the vocabulary of 321")


@pytest.mark.parametrize("template, needle", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took more than 2 s"),
    ("{% set s = 'xxxxxxxxxxxxxxxx' %}" + "{% set s = s ~ s %}" * 40 + "{{ s | length }}", "built a value of"),
], ids=["nested-loops", "doubling"])
def test_generate_renders_a_hostile_chat_template_within_limits(hf_copy, capsys, template, needle):
    """transformers renders chat templates without limits: the loop hung `mmzoo generate` forever, the doubling asked
    for 16 TiB. The bounded render `mmzoo preprocess` uses now runs first."""
    (hf_copy / "chat_template.jinja").write_text(template)
    assert_one_line(*run_main(capsys, "generate", hf_copy, "--prompt", "hi", "--max-new-tokens", "1"),
                    "the tokenizer's chat_template", needle)


def test_generate_still_renders_templates_with_transformers_extensions(hf_copy, capsys):
    """{% generation %}, tojson and strftime_now exist in the bounded probe as in transformers."""
    (hf_copy / "chat_template.jinja").write_text(
        "{{ strftime_now('%Y') | tojson }}{% for m in messages %}USER: {{ m['content'] }}\n{% endfor %}"
        "{% generation %}ASSISTANT:{% endgeneration %}")
    from mmzoo.generate import generate

    assert generate(hf_copy, "hi", max_new_tokens=1)["prompt"].endswith("USER: hi\nASSISTANT:")
