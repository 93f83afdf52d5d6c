"""lmms-eval's `llava_hf` model class reads mmzoo's hf output as it is and answers exactly what `mmzoo generate` does.

lmms-eval runs in its own cached side environment (~/.cache/mmzoo-tests/lmms-eval-env, tests/side_env.py:
lmms-eval 0.7.3 and decord installed over this interpreter's packages, torch and transformers included);
building it the first time takes a few minutes."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mmzoo
from side_env import clean_env, side_python

HERE = Path(__file__).parent
LMMS_EVAL_PACKAGES = ["lmms-eval==0.7.3", "decord"]
LMMS_EVAL_PROBE = ("import torch, lmms_eval, importlib.metadata as m; assert m.version('lmms-eval') == '0.7.3'; "
                   "from lmms_eval.models.simple.llava_hf import LlavaHf")


def test_lmms_eval_llava_hf_answers_like_mmzoo_generate(tiny, tmp_path):
    from mmzoo.generate import generate
    from mmzoo.demo.tiny import make_images

    python = side_python("lmms-eval-env", LMMS_EVAL_PACKAGES, LMMS_EVAL_PROBE, override_env="MMZOO_LMMS_EVAL_PYTHON")
    internal, hf = tmp_path / "internal", tmp_path / "exported-hf"
    mmzoo.convert(tiny.hf("llama", "clip"), internal, tgt_fmt="internal")
    mmzoo.convert(internal, hf, tgt_fmt="hf")  # the writer `mmzoo export --tgt-fmt hf` uses
    image = make_images(tmp_path / "images", 1)[0]
    question = "What is shown in the image?"
    proc = subprocess.run([python, str(HERE / "run_lmms_eval.py"), str(hf), str(image), question, "10"],
                          capture_output=True, text=True, env=clean_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])["answer"]
    # lmms-eval puts the image first ("<image>\n" + question) and applies the tokenizer's chat template: the
    # `--template auto` prompt of mmzoo generate
    ours = generate(internal, question, [image], max_new_tokens=10)
    assert ours["new_tokens"] > 0 and ours["answer"].strip()
    assert theirs == ours["answer"]


# The task names docs/eval.md gives for the seeds' benchmarks (MMBench-en dev, TextVQA val, GQA test-dev
# balanced, ScienceQA-IMG, POPE, MME).
SEED_BENCHMARK_TASKS = ["mmbench_en_dev", "textvqa_val", "gqa", "scienceqa_img", "pope", "mme"]


def test_docs_task_names_are_lmms_eval_tasks():
    import re

    python = side_python("lmms-eval-env", LMMS_EVAL_PACKAGES, LMMS_EVAL_PROBE, override_env="MMZOO_LMMS_EVAL_PYTHON")
    proc = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('lmms_eval').submodule_search_locations[0])"],
                          capture_output=True, text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    defined = set()
    for yaml_file in (Path(proc.stdout.strip()) / "tasks").rglob("*.yaml"):
        defined |= set(re.findall(r"^(?:task|group):\s*\"?([\w-]+)\"?\s*$", yaml_file.read_text(errors="replace"), re.M))
    assert set(SEED_BENCHMARK_TASKS) <= defined, sorted(set(SEED_BENCHMARK_TASKS) - defined)
    docs = (HERE.parents[1] / "docs" / "eval.md").read_text()
    assert "--tasks " + ",".join(SEED_BENCHMARK_TASKS) in docs
