"""`mmzoo diff` compares settings too: model config, generation config, processor and tokenizer files."""
from __future__ import annotations

import json
import shutil

import pytest

from cli_helpers import run_cli


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _set_text(key, value):
    def edit(cfg):
        cfg["text_config"][key] = value
    return edit


def _set_rope_theta(cfg):
    text = cfg["text_config"]
    if "rope_parameters" in text:
        text["rope_parameters"]["rope_theta"] = 1234.0
    else:
        text["rope_theta"] = 1234.0


@pytest.mark.parametrize("edit,field", [
    (lambda c: c.update(image_token_index=5), "image_token_id"),
    (lambda c: c.update(vision_feature_layer=-1), "vision_feature_layer"),
    (_set_text("rms_norm_eps", 1e-3), "text_config.rms_norm_eps"),
    (_set_rope_theta, "rope"),
], ids=["image_token_index", "vision_feature_layer", "rms_norm_eps", "rope_theta"])
def test_a_config_field_that_changes_the_model_is_a_difference(tiny, tmp_path, edit, field):
    changed = tmp_path / "changed"
    shutil.copytree(tiny.hf(), changed)
    _edit_json(changed / "config.json", edit)
    code, stdout, stderr = run_cli("diff", str(tiny.hf()), str(changed), "--json")
    assert code == 1, stderr
    result = json.loads(stdout)
    assert not result["equal"] and result["differences"] == []  # every tensor is still identical
    assert [row["file"] for row in result["config_differences"]] == ["model config"]
    assert field in result["config_differences"][0]["field"]
    code, stdout, _ = run_cli("diff", str(tiny.hf()), str(changed))
    assert code == 1 and "1 setting differ" in stdout and "model config" in stdout
    code, stdout, _ = run_cli("diff", str(tiny.hf()), str(changed), "--weights-only")
    assert code == 0 and "equal" in stdout
    code, stdout, _ = run_cli("diff", str(tiny.hf()), str(changed), "--weights-only", "--json")
    assert code == 0 and json.loads(stdout)["config_differences"] is None


def test_generation_processor_and_tokenizer_files_are_compared(tiny, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(tiny.hf(), changed)
    _edit_json(changed / "generation_config.json", lambda g: g.update(max_new_tokens=7))
    _edit_json(changed / "tokenizer_config.json", lambda t: t.update(model_max_length=77))
    (changed / "chat_template.jinja").write_text((changed / "chat_template.jinja").read_text() + " ")
    processor = changed / "processor_config.json"
    _edit_json(processor, lambda p: (p.get("image_processor", p)).update(image_mean=[0.1, 0.2, 0.3]))
    _edit_json(processor, lambda p: p.update(patch_size=p["patch_size"] * 2))
    import mmzoo

    result = mmzoo.diff(tiny.hf(), changed)
    found = {(row["file"], row["field"]) for row in result["config_differences"]}
    assert ("generation_config.json", "max_new_tokens") in found
    assert ("tokenizer_config.json", "model_max_length") in found
    assert ("tokenizer", "chat_template") in found
    assert ("image processor", "image_mean") in found
    assert ("processor_config.json", "patch_size") in found
    assert len(found) == 5 and not result["equal"] and result["differences"] == []


def test_the_same_model_in_every_format_has_equal_settings(tiny, tmp_path):
    import mmzoo

    for fmt in ("internal", "llava"):
        mmzoo.convert(tiny.hf(), tmp_path / fmt, tgt_fmt=fmt)
    mmzoo.convert(tmp_path / "llava", tmp_path / "back", tgt_fmt="hf")
    for other in ("internal", "llava", "back"):
        result = mmzoo.diff(tiny.hf(), tmp_path / other)
        assert result["equal"] and result["config_differences"] == [], (other, result["config_differences"])
    code, stdout, _ = run_cli("diff", str(tiny.hf()), str(tmp_path / "llava"))
    assert code == 0 and "tensors and settings" in stdout


def test_a_chat_template_is_one_setting_wherever_it_is_kept(tiny, tmp_path):
    """transformers 5 reads chat_template.jinja, 4.x the template inside tokenizer_config.json: the same text
    in either place is equal, another text in either place is a difference."""
    import mmzoo

    moved = tmp_path / "moved"
    shutil.copytree(tiny.hf(), moved)
    template = (moved / "chat_template.jinja").read_text()
    (moved / "chat_template.jinja").unlink()
    _edit_json(moved / "tokenizer_config.json", lambda t: t.update(chat_template=template))
    result = mmzoo.diff(tiny.hf(), moved)
    assert result["equal"] and result["config_differences"] == []
    _edit_json(moved / "tokenizer_config.json", lambda t: t.update(chat_template=template + "{# changed #}"))
    rows = mmzoo.diff(tiny.hf(), moved)["config_differences"]
    assert [(row["file"], row["field"]) for row in rows] == [("tokenizer", "chat_template")]
