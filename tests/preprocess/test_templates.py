"""Tokenizer/template problems are one clear error up front, not a crash or a flood of rejections."""
from __future__ import annotations

import shutil

import pytest

from mmzoo.errors import MmzooError
from mmzoo.preprocess import preprocess
from pp_rendering import GOOD, N_IMG, collapse, read_shards, write_jsonl


def _tok_with_template(tmp_path, tok_dir, template: str | None):
    folder = tmp_path / "tok"
    shutil.copytree(tok_dir, folder)
    if template is None:
        (folder / "chat_template.jinja").unlink()
    else:
        (folder / "chat_template.jinja").write_text(template)
    return folder


@pytest.mark.parametrize(
    "template, message",
    [
        (None, "no chat_template"),
        ("{% for m in messages %}{{ m['content'] ", "does not compile"),
        ("{{ messages | length }} {% for m in messages %}{{ m['content'] }}{% endfor %}", "not prefix-stable"),
        ("{{ undefined_function() }}", "chat_template"),
    ],
)
def test_unusable_chat_templates(tmp_path, tok_dir, image_root, template, message):
    tok = _tok_with_template(tmp_path, tok_dir, template)
    data = write_jsonl(tmp_path / "d.jsonl", GOOD)
    with pytest.raises(MmzooError, match=message):
        preprocess([data], image_root, tok, tmp_path / "out", template="auto", num_image_tokens=N_IMG)
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot work


def test_template_raise_exception_rejects_the_sample(tmp_path, tok_dir, image_root, tokenizer):
    # Like real templates that refuse system turns: the sample is rejected, the others pass.
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                "<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    tok = _tok_with_template(tmp_path, tok_dir, template)
    out = tmp_path / "out"
    manifest = preprocess([write_jsonl(tmp_path / "d.jsonl", GOOD)], image_root, tok, out, template="auto", num_image_tokens=N_IMG)
    assert manifest["statistics"]["rejected"] == {"bad_schema": 1}
    assert "no system role" in (out / "rejected.jsonl").read_text()
    first = read_shards(out)[0]
    text = tokenizer.decode(collapse(first["ids"], tokenizer.token_to_id("<image>"), N_IMG), skip_special_tokens=False)
    assert text == "<user><image>\nWhat is shown?</s><assistant>A cat on a red sofa.</s>"
    assert tokenizer.decode(first["ids"][first["mask"] == 1].tolist(), skip_special_tokens=False) == "A cat on a red sofa.</s>"


def test_tokenizer_without_image_token(tmp_path, image_root):
    from mmzoo.demo.tiny import make_tokenizer

    folder = tmp_path / "plain_tok"
    make_tokenizer(with_image_token=False).save_pretrained(folder)
    data = write_jsonl(tmp_path / "d.jsonl", GOOD)
    with pytest.raises(MmzooError, match="no <image> token"):
        preprocess([data], image_root, folder, tmp_path / "out", template="vicuna_v1", num_image_tokens=N_IMG)
