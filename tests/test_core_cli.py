"""The CLI: fast start, clear one-line errors with exit code 2, atomic and non-destructive output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import mmzoo_command, run_cli


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_help_imports_neither_torch_nor_transformers():
    code = "import sys, mmzoo.cli; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code, stdout, _ = run_cli("--help")
    assert code == 0 and "convert" in stdout and "inspect" in stdout


def _assert_one_line_error(code, stderr, *needles):
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mmzoo: error: ")
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _broken_copy(tiny, tmp_path, break_it, arch=("llama", "clip")):
    src = tmp_path / "src"
    shutil.copytree(tiny.hf(*arch), src)
    break_it(src)
    return src


def _truncate(src):
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])


def _corrupt_header(src):
    data = bytearray((src / "model.safetensors").read_bytes())
    data[8:40] = b"#" * 32
    (src / "model.safetensors").write_bytes(bytes(data))


def _bad_config(src):
    (src / "config.json").write_text("{ not json")


def _shape_mismatch(src):
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 100
    (src / "config.json").write_text(json.dumps(cfg))


def _missing_tensor(src):
    from safetensors.torch import load_file, save_file

    state = load_file(src / "model.safetensors")
    del state["language_model.model.layers.1.mlp.down_proj.weight"]
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})


def _index_missing_shard(src):
    from safetensors.torch import load_file, save_file

    state = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    save_file({k: state[k] for k in names[:half]}, src / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in names[:half]}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in names[half:]})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _extra_tensor(src):
    from safetensors.torch import load_file, save_file

    state = load_file(src / "model.safetensors")
    state["language_model.model.layers.0.extra_adapter.weight"] = state["language_model.model.norm.weight"].clone()
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})


def _unsupported_arch(src):
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["model_type"] = "gpt_neox"
    (src / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "break_it,needles",
    [
        (_truncate, ["model.safetensors", "truncated"]),
        (_corrupt_header, ["model.safetensors", "not JSON"]),
        (_bad_config, ["config.json", "not valid JSON"]),
        (_shape_mismatch, ["mlp.gate_proj.weight", "shape"]),
        (_missing_tensor, ["down_proj", "missing"]),
        (_index_missing_shard, ["model-00002-of-00002.safetensors", "does not exist"]),
        (_unsupported_arch, ["gpt_neox", "supported: llama, mistral, qwen2, phi3"]),
    ],
    ids=["truncated", "corrupt-header", "config-not-json", "shape-mismatch", "missing-tensor", "index-missing-shard", "unsupported-arch"],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny, tmp_path, break_it, needles):
    src = _broken_copy(tiny, tmp_path, break_it)
    before = _snapshot(src)
    code, _, stderr = run_cli("convert", str(src), "-o", str(tmp_path / "out"), "--tgt-fmt", "internal")
    _assert_one_line_error(code, stderr, *needles)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial*"))
    assert _snapshot(src) == before


def test_missing_folder_unknown_format_and_bad_target(tmp_path, tiny):
    code, _, stderr = run_cli("convert", str(tmp_path / "nope"), "-o", str(tmp_path / "out"), "--tgt-fmt", "hf")
    _assert_one_line_error(code, stderr, "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli("convert", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--tgt-fmt", "hf")
    _assert_one_line_error(code, stderr, "is not a checkpoint mmzoo reads", "mmzoo formats")
    assert "--src-fmt" not in stderr  # no format can read it, so no --src-fmt would help
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "out"), "--tgt-fmt", "gguf")
    _assert_one_line_error(code, stderr, "unknown format 'gguf'", "hf")
    code, _, stderr = run_cli("convert", str(tiny.hf("qwen2", "clip")), "-o", str(tmp_path / "out"), "--tgt-fmt", "llava")
    _assert_one_line_error(code, stderr, "Llama or Mistral", "qwen2")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--tgt-fmt", "hf", "--debug"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "does not exist" in proc.stderr


def test_existing_output_is_refused_then_replaced_with_overwrite(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(out), "--tgt-fmt", "internal")
    _assert_one_line_error(code, stderr, "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    code, stdout, stderr = run_cli("convert", str(tiny.hf()), "-o", str(out), "--tgt-fmt", "internal", "--overwrite", "--verify")
    assert code == 0, stderr
    assert "verified" in stdout and not (out / "keep.txt").exists() and (out / "mmzoo.yaml").is_file()


def test_failure_midway_leaves_nothing_and_keeps_previous_output(tiny, tmp_path):
    import mmzoo

    out = tmp_path / "out"
    mmzoo.convert(tiny.hf(), out, tgt_fmt="internal")
    before = _snapshot(out)
    calls = {"n": 0}

    def interrupt(_n):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mmzoo.convert(tiny.hf(), out, tgt_fmt="llava", overwrite=True, progress=interrupt)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_inside_source_is_refused(tiny, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny.hf(), src)
    code, _, stderr = run_cli("convert", str(src), "-o", str(src / "sub"), "--tgt-fmt", "internal")
    _assert_one_line_error(code, stderr, "must not be the source")


def test_drop_unmatched_keys(tiny, tmp_path):
    src = _broken_copy(tiny, tmp_path, _extra_tensor)
    code, _, stderr = run_cli("convert", str(src), "-o", str(tmp_path / "out"), "--tgt-fmt", "internal")
    _assert_one_line_error(code, stderr, "model.layers.0.extra_adapter.weight", "--drop-unmatched-keys")
    code, _, stderr = run_cli("convert", str(src), "-o", str(tmp_path / "out"), "--tgt-fmt", "internal", "--drop-unmatched-keys")
    assert code == 0, stderr


def test_inspect_diff_and_formats(tiny, tmp_path):
    import mmzoo

    code, stdout, stderr = run_cli("inspect", str(tiny.hf("phi3", "siglip")), "--json")
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["format"] == "hf" and info["text"] == "phi3" and info["vision"] == "siglip_vision_model"
    assert info["parameters"] == sum(info["parameters_by_component"].values())
    assert info["tokenizer"] and info["image_processor"] and info["moe"] is None
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny.hf("phi3", "siglip"))
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    code, stdout, _ = run_cli("inspect", str(tiny.hf()))
    assert code == 0 and "parameters" in stdout and "dense" in stdout

    mmzoo.convert(tiny.hf(), tmp_path / "same", tgt_fmt="llava")
    code, stdout, _ = run_cli("diff", str(tiny.hf()), str(tmp_path / "same"))
    assert code == 0 and "equal" in stdout
    mmzoo.convert(tiny.hf(), tmp_path / "half", tgt_fmt="internal", dtype="bf16")
    code, stdout, _ = run_cli("diff", str(tiny.hf()), str(tmp_path / "half"))
    assert code == 1 and "dtype F32 vs BF16" in stdout
    code, stdout, _ = run_cli("diff", str(tiny.hf()), str(tiny.hf("llama", "siglip")), "--json")
    result = json.loads(stdout)
    assert code == 1 and not result["equal"] and any(d["problem"] == "only in B" for d in result["differences"])

    code, stdout, _ = run_cli("formats")
    assert code == 0 and all(word in stdout for word in ("hf", "llava", "internal", "phi3", "siglip_vision_model"))


def test_wrong_src_fmt_is_a_clear_error(tiny, tmp_path):
    for fmt in ("internal", "llava", "moe-llava"):
        code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "out"), "--tgt-fmt", "hf", "--src-fmt", fmt)
        _assert_one_line_error(code, stderr, f"is not a {fmt} checkpoint", "it looks like hf")
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "out"), "--tgt-fmt", "internal", "--src-fmt", "hf")
    assert code == 0, stderr


def test_os_errors_are_one_line(tiny, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "a-file" / "out"), "--tgt-fmt", "internal")
    _assert_one_line_error(code, stderr, "a-file")
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_plain_llm_or_vision_folder_names_mmzoo_init(tmp_path):
    from mmzoo.demo.tiny import build_llm, build_vision

    build_llm(tmp_path / "llm")
    build_vision(tmp_path / "vision")
    llm, vision = str(tmp_path / "llm"), str(tmp_path / "vision")
    for args in (("inspect", llm), ("convert", llm, "-o", str(tmp_path / "o"), "--tgt-fmt", "hf"),
                 ("convert", llm, "-o", str(tmp_path / "o"), "--tgt-fmt", "hf", "--src-fmt", "hf"), ("diff", llm, llm)):
        code, _, stderr = run_cli(*args)
        _assert_one_line_error(code, stderr, "plain language model (llama)", f"mmzoo init --vision VISION --text {llm}")
        assert "--src-fmt" not in stderr, args  # neither "pass --src-fmt" nor "drop --src-fmt"
    code, _, stderr = run_cli("inspect", vision)
    _assert_one_line_error(code, stderr, "vision encoder (clip_vision_model)", f"mmzoo init --vision {vision} --text LLM")
    assert not (tmp_path / "o").exists()


def test_usage_mistakes_are_one_line_naming_the_help():
    code, _, stderr = run_cli("inspect", "x", "--src-fmt", "hf")
    _assert_one_line_error(code, stderr, "No such option: --src-fmt", "`mmzoo inspect --help`")
    code, _, stderr = run_cli("convert")
    _assert_one_line_error(code, stderr, "Missing argument 'SRC'", "`mmzoo convert --help`")
    code, _, stderr = run_cli("convert", "a", "-o", "b", "--tgt-fmt", "hf", "--moe-experts", "four")
    _assert_one_line_error(code, stderr, "--moe-experts")


def test_help_reads_like_a_unix_tool():
    code, stdout, _ = run_cli("convert", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "Usage: mmzoo convert [OPTIONS] SRC" in text and "{src}" not in text
    assert "<bool>" not in stdout and "--verify" in stdout
    assert "moe-llava" in stdout  # --tgt-fmt lists every format it writes
    for command in (("inspect",), ("diff",), ("train",), ("export",), ("hub", "push"), ("hub", "pull"), ("preprocess",)):
        code, stdout, _ = run_cli(*command, "--help")
        assert code == 0 and "<bool>" not in stdout and "{" not in stdout.split("Usage:")[1].splitlines()[0], command
    code, stdout, _ = run_cli("hub", "pull", "--help")
    assert "moe-llava" in stdout


def test_errors_suggest_only_options_the_command_has(tiny, tmp_path):
    src = _broken_copy(tiny, tmp_path, _extra_tensor)
    code, _, stderr = run_cli("inspect", str(src))  # inspect has no --drop-unmatched-keys: name the command that does
    _assert_one_line_error(code, stderr, "extra_adapter", "`mmzoo convert --drop-unmatched-keys`")
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "moe"), "--tgt-fmt", "moe-llava")
    _assert_one_line_error(code, stderr, "dense", "`mmzoo convert SRC -o OUT --tgt-fmt moe-llava --moe-experts N`")


def test_inspect_names_an_upcycled_llm_by_its_dense_architecture(tiny, tmp_path):
    import mmzoo

    mmzoo.convert(tiny.hf(), tmp_path / "moe-llava", tgt_fmt="moe-llava", moe=dict(num_experts=4, top_k=2, layers="even"))
    code, stdout, stderr = run_cli("inspect", str(tmp_path / "moe-llava"), "--json")
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["format"] == "moe-llava" and info["text"] == "llama" and info["text_model_type"] == "qwen2_moe"
    code, stdout, _ = run_cli("inspect", str(tmp_path / "moe-llava"))
    assert "llama (2 layers, hidden 64, loads as qwen2_moe)" in " ".join(stdout.split())
    info = mmzoo.inspect(tiny.hf())
    assert info["text"] == info["text_model_type"] == "llama"


def test_a_missing_output_parent_is_created_and_removed_again_on_failure(tiny, tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(out), "--tgt-fmt", "internal")
    assert code == 0, stderr
    assert (out / "mmzoo.yaml").is_file()
    code, _, stderr = run_cli("convert", str(tiny.hf("qwen2", "clip")), "-o", str(tmp_path / "gone" / "out"), "--tgt-fmt", "llava")
    _assert_one_line_error(code, stderr, "qwen2")
    assert not (tmp_path / "gone").exists()  # the parents made for a failed write are removed
    from mmzoo.demo.tiny import build_llm, build_vision

    build_llm(tmp_path / "llm")
    build_vision(tmp_path / "vision")
    code, _, stderr = run_cli("init", "--vision", str(tmp_path / "vision"), "--text", str(tmp_path / "llm"),
                              "-o", str(tmp_path / "made" / "vlm"))
    assert code == 0, stderr
    assert (tmp_path / "made" / "vlm" / "mmzoo.yaml").is_file()


def test_export_refuses_an_existing_output_before_reading_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()  # not even a training run: the OUT check comes first, before any checkpoint is loaded
    (tmp_path / "out").mkdir()
    code, _, stderr = run_cli("export", str(run), "-o", str(tmp_path / "out"))
    _assert_one_line_error(code, stderr, "already exists", "--overwrite")
    code, _, stderr = run_cli("export", str(run), "-o", str(run / "inside"))
    _assert_one_line_error(code, stderr, "must not be the source")


def test_a_missing_optional_extra_is_one_line_naming_it(tmp_path):
    """Without the train extra (DeepSpeed), train (one process or a launcher), export and demo say which extra to
    install before doing anything, instead of an import traceback (from a worker process, for --nproc 2)."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(  # deepspeed as if not installed: the path finder does not find it
        "import importlib.machinery as machinery\n"
        "_find = machinery.PathFinder.find_spec\n"
        "def _hidden(cls, name, path=None, target=None):\n"
        "    return None if name.split('.')[0] == 'deepspeed' else _find(name, path, target)\n"
        "machinery.PathFinder.find_spec = classmethod(_hidden)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    configs = Path(__file__).resolve().parents[1] / "configs"
    for args in (("train", "--params", str(configs / "tiny-sft.yaml")),
                 ("train", "--params", str(configs / "tiny-sft.yaml"), "--nproc", "2"),
                 ("export", str(tmp_path / "run"), "-o", str(tmp_path / "out")),
                 ("demo", "-o", str(tmp_path / "demo"))):
        proc = subprocess.run(mmzoo_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        _assert_one_line_error(proc.returncode, proc.stderr, f"mmzoo {args[0]} needs deepspeed",
                               "pip install --no-build-isolation 'mmzoo[train]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no run, export or demo folder begun


def test_python_dash_m_mmzoo_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "mmzoo", "formats"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "moe-llava" in proc.stdout, proc.stderr


def test_printed_paths_keep_their_brackets(tiny, tmp_path):
    """Console lines are rich markup: a folder named like `run[1]` (or a note naming `mmzoo[plot]`) must not lose
    its bracketed part."""
    code, stdout, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "run[1]"), "--tgt-fmt", "internal",
                                   "--verify")
    assert code == 0, stderr
    flat = "".join(stdout.split())  # rich wraps (or folds) long lines at the console's width
    assert str(tmp_path / "run[1]").replace(" ", "") + ",verified" in flat, stdout


def test_upcycling_choice_errors_name_the_convert_option(tiny, tmp_path):
    for option, value, choices in (("--moe-style", "mixtrall", "'mixtral', 'shared' or 'modality'"),
                                   ("--moe-target", "txt", "'text', 'vision' or 'projector'")):
        code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "out"), "--tgt-fmt", "hf",
                                  "--moe-experts", "4", option, value)
        _assert_one_line_error(code, stderr, f"({option} '{value}')", f"choose from {choices}")
    assert not (tmp_path / "out").exists()


def test_config_mistakes_point_at_the_line_and_the_keys(tmp_path, capsys):
    from cli_helpers import cli_error

    broken = tmp_path / "broken.yaml"
    broken.write_text("stage: sft\n  model: [x\n")
    assert cli_error(capsys, "train", "--params", str(broken)) == \
        f"mmzoo: error: {broken}:2:8: not valid YAML (mapping values are not allowed here)"
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("stage: sft\nmodel: m\ndata: data/sft\noutput_dir: runs/x\n")
    line = cli_error(capsys, "train", "--params", str(scalar))
    assert "invalid data: expected a section of keys (path, images, num_workers, verify_shards, worker_timeout), got 'data/sft'" in line, line
    assert "DataSection" not in line
    # a bad value typed on the command line names the --set, not the file that does not hold it
    fine = tmp_path / "fine.yaml"
    fine.write_text("stage: sft\nmodel: m\ndata: {path: d, images: i}\noutput_dir: runs/x\n")
    line = cli_error(capsys, "train", "--params", str(fine), "--set", "train.lr=fast")
    assert line.startswith("mmzoo: error: --set train.lr=fast: invalid train.lr:"), line


def test_missing_inputs_are_named_as_missing(tmp_path, capsys):
    from cli_helpers import cli_error

    images = tmp_path / "images"
    images.mkdir()
    data = tmp_path / "data.jsonl"
    data.write_text("")
    line = cli_error(capsys, "preprocess", "--data", str(data), "--images", str(images), "--tokenizer",
                     str(tmp_path / "no-such-model"), "-o", str(tmp_path / "out"))
    assert line == f"mmzoo: error: {tmp_path / 'no-such-model'}: does not exist"
    line = cli_error(capsys, "analyze-routing", str(tmp_path), "--data", str(tmp_path / "data" / "sft"),
                     "-o", str(tmp_path / "routing"))
    assert "data/sft: does not exist" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "routing").exists()


def test_preprocess_that_keeps_nothing_says_so(tiny, tmp_path, capsys):
    """Every row rejected (here: all too long) is a finished run, exit 0, but a training run would find no data:
    one warning line says so, with the reasons, also with --quiet."""
    from mmzoo.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": "a rather long question " * 8},
                                             {"from": "gpt", "value": "an answer"}]} for i in range(3)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    main(["preprocess", "--data", str(data), "--images", str(images), "--tokenizer", str(tiny.hf()),
          "--max-seq-len", "8", "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    expected = f"warning: no sample was kept (too_long 3); see {tmp_path / 'out' / 'rejected.jsonl'}"
    assert "".join(expected.split()) in "".join(err.split()), err  # rich wraps at the console width


def test_formats_json_lists_what_the_table_lists():
    from mmzoo import archs
    from mmzoo.converters import registry

    code, stdout, stderr = run_cli("formats", "--json")
    assert code == 0, stderr
    listed = json.loads(stdout)
    assert [f["name"] for f in listed["formats"]] == list(registry.FORMAT_MODULES)
    assert {"hf", "llava", "internal", "moe-llava", "libmoe", "cerebras"} <= {f["name"] for f in listed["formats"] if f["write"]}
    assert listed["vision_encoders"] == list(archs.VISION_TABLES) and "llama" in listed["llms"]


def test_upcycling_options_without_moe_experts_are_refused(tiny, tmp_path):
    """`--moe-style shared` alone used to convert without upcycling and say nothing."""
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(tmp_path / "out"), "--tgt-fmt", "hf",
                              "--moe-style", "shared", "--moe-layers", "odd")
    _assert_one_line_error(code, stderr, "--moe-style, --moe-layers only apply when upcycling: add --moe-experts N")
    assert not (tmp_path / "out").exists()


def test_top_level_help_says_where_to_start():
    code, stdout, _ = run_cli("--help")
    flat = " ".join(stdout.replace("│", " ").split())
    assert code == 0 and "Start with `mmzoo demo -o mmzoo-demo`" in flat and "--debug" in flat


def test_a_tiny_config_before_the_demo_says_to_run_the_demo(tmp_path, monkeypatch, capsys):
    from cli_helpers import cli_error

    monkeypatch.chdir(tmp_path)  # a folder without mmzoo-demo/
    configs = Path(__file__).resolve().parents[1] / "configs"
    line = cli_error(capsys, "train", "--params", str(configs / "tiny-sft.yaml"))
    assert line == ("mmzoo: error: model 'mmzoo-demo/train/pretrain-internal' does not exist; "
                    "run `mmzoo demo -o mmzoo-demo` first")
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_a_layout_refusal_names_the_format_asked_for(tiny, tmp_path):
    """cerebras holds what llava holds; its refusal used to name the llava layout."""
    code, _, stderr = run_cli("convert", str(tiny.hf("qwen2", "clip")), "-o", str(tmp_path / "out"), "--tgt-fmt", "cerebras")
    _assert_one_line_error(code, stderr, "the cerebras layout holds a Llama or Mistral LLM", "qwen2")
