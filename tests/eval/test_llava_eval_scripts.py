"""The LLaVA repository's evaluation scripts run, unmodified, on a tiny `mmzoo convert --tgt-fmt llava` output
(the writer `mmzoo export --tgt-fmt llava` uses) and answer what `mmzoo generate` answers.

The scripts are llava-torch 1.2.2.post1's own ``llava/eval/model_vqa.py``, ``model_vqa_loader.py``,
``model_vqa_science.py`` and ``model_vqa_mmbench.py``, run as ``python -m llava.eval.<script>`` with the
arguments of LLaVA's ``scripts/v1_5/eval/*.sh`` (``--temperature 0 --conv-mode vicuna_v1``), in a cached side
environment (tests/side_env.py: transformers 4.37.2 as LLaVA pins it, plus pandas, which
``model_vqa_mmbench.py`` imports and the llava-env of tests/llava_code lacks) at
~/.cache/mmzoo-tests/llava-eval-env (``MMZOO_LLAVA_EVAL_PYTHON`` names an existing interpreter instead).

They are written for a CUDA GPU. tests/eval/llava_gpu_shim/sitecustomize.py, put on their PYTHONPATH, stubs
what is GPU-only, and only that:

- ``Tensor.cuda()`` and ``Module.cuda()`` return the object unchanged (it stays on the CPU);
- ``Tensor.to(...)`` to the device ``"cuda"`` (``model_vqa_loader.py``) goes to the CPU instead;
- ``MMZOO_SHIM_FLOAT32=1`` (set by the comparisons with `mmzoo generate`, which runs the float32 checkpoint
  in float32): float16 becomes float32 in ``from_pretrained(torch_dtype=torch.float16)`` (LLaVA's
  ``load_pretrained_model``), ``Tensor.half()`` and ``Tensor.to(dtype=torch.float16)``. CPU kernels for
  float16 exist, so one test runs a script in float16 exactly as on a GPU.

``device_map="auto"`` (the builder's default) needs no stub: accelerate places everything on the CPU.

Inputs are in the formats the scripts read: a JSONL question file (``question_id``/``image``/``text``) and an
image folder for model_vqa and model_vqa_loader, a JSON list of ScienceQA records (``id``, optional
``image``, ``conversations``) for model_vqa_science, a TSV with base64 images for model_vqa_mmbench.

model_vqa, model_vqa_science and model_vqa_mmbench always generate up to 1024 new tokens (hard-coded); the
tiny model never emits EOS, so their answers are checked to begin with `mmzoo generate`'s first
``PREFIX_TOKENS`` tokens (1024 tokens of `mmzoo generate` per question would take minutes on 2 cores).
model_vqa_loader takes ``--max_new_tokens``: its answers must equal `mmzoo generate`'s exactly.

The tiny checkpoint's tokenizer.json gets the post-processor a published Llama tokenizer.json has (BOS before
every text): LLaVA's ``tokenizer_image_token`` relies on the tokenizer to add BOS, while `mmzoo generate
--template vicuna_v1` writes ``<s>`` itself; mmzoo's toy tokenizer adds none.
"""
from __future__ import annotations

import base64
import csv
import json
import subprocess
from pathlib import Path

import pytest

import mmzoo
from side_env import LLAVA_PACKAGES, LLAVA_PROBE, clean_env, side_python

HERE = Path(__file__).parent
SHIM = HERE / "llava_gpu_shim"
PREFIX_TOKENS = 16
SINGLE_PRED = "Answer with the option's letter from the given choices directly."
LLAMA_BOS_POST_PROCESSOR = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
}


@pytest.fixture(scope="module")
def llava_eval_python() -> str:
    try:
        return side_python("llava-eval-env", [*LLAVA_PACKAGES, "pandas<2.3"], LLAVA_PROBE + "; import pandas, shortuuid",
                           no_deps=("llava-torch==1.2.2.post1",), override_env="MMZOO_LLAVA_EVAL_PYTHON")
    except (RuntimeError, subprocess.CalledProcessError) as exc:  # no package index reachable, typically
        pytest.skip(f"the LLaVA side environment (~/.cache/mmzoo-tests/llava-eval-env) cannot be built here: {str(exc).splitlines()[0]}")


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    """A tiny dense LLaVA-1.5-style model: its internal form (for `mmzoo generate`) and its llava export."""
    import shutil

    from mmzoo.generate import generate
    from mmzoo.models.load import load_model, load_processor
    from mmzoo.demo.tiny import make_images

    root = tmp_path_factory.mktemp("llava-eval")
    hf = root / "hf"
    shutil.copytree(tiny.hf("llama", "clip"), hf)
    tokenizer_json = hf / "tokenizer.json"
    tokenizer_json.write_text(json.dumps({**json.loads(tokenizer_json.read_text()), "post_processor": LLAMA_BOS_POST_PROCESSOR}))
    mmzoo.convert(hf, root / "internal", tgt_fmt="internal")
    mmzoo.convert(root / "internal", root / "export", tgt_fmt="llava")
    images = make_images(root / "images", 3)
    model, processor = load_model(root / "internal"), load_processor(root / "internal")

    def answer(prompt: str, image: Path | None, max_new_tokens: int) -> dict:
        return generate(root / "internal", prompt, [image] if image else [], max_new_tokens=max_new_tokens,
                        template="vicuna_v1", model=model, processor=processor)

    return {"root": root, "model_path": root / "export" / "text_model_llava", "images": images, "answer": answer}


def run_script(python: str, script: str, model_path: Path, workdir: Path, *args: str, float32: bool = True) -> list[dict]:
    """``python -m llava.eval.<script>`` as LLaVA's eval shell scripts call it; returns the answers file's records."""
    answers = workdir / "answers" / f"{script}.jsonl"
    env = {**clean_env(), "PYTHONPATH": str(SHIM), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MMZOO_SHIM_FLOAT32": "1" if float32 else "0"}
    proc = subprocess.run(
        [python, "-m", f"llava.eval.{script}", "--model-path", str(model_path), "--answers-file", str(answers),
         "--temperature", "0", "--conv-mode", "vicuna_v1", *args],
        capture_output=True, text=True, env=env, cwd=workdir, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in answers.read_text().splitlines()]


def assert_begins_with_mmzoo_answer(theirs: str, ours: dict) -> None:
    """``theirs`` (1024 new tokens at most) against `mmzoo generate`'s first PREFIX_TOKENS tokens."""
    text = ours["answer"].strip()
    if ours["new_tokens"] < PREFIX_TOKENS:  # ended with EOS: the whole answer
        assert theirs == text
    else:  # the last token may end inside a UTF-8 character that the next one completes
        assert len(text.rstrip("\ufffd")) >= PREFIX_TOKENS // 2 and theirs.startswith(text.rstrip("\ufffd")), (theirs[:200], text)


def write_vqa_questions(workdir: Path, images: list[Path]) -> list[dict]:
    questions = [{"question_id": 7, "image": images[0].name, "text": "What is shown in the image?"},
                 {"question_id": "q-2", "image": images[1].name, "text": "What colour is the sky?\nAnswer the question using a single word or phrase."},
                 {"question_id": 11, "image": images[2].name, "text": "Is there a dog in the image?"}]
    (workdir / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return questions


def test_model_vqa_loader_answers_equal_mmzoo_generate(llava_eval_python, checkpoint, tmp_path):
    questions = write_vqa_questions(tmp_path, checkpoint["images"])
    answers = run_script(llava_eval_python, "model_vqa_loader", checkpoint["model_path"], tmp_path,
                         "--question-file", "questions.jsonl", "--image-folder", str(checkpoint["images"][0].parent),
                         "--max_new_tokens", "12")
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]  # one per question, in order
    for question, answer, image in zip(questions, answers, checkpoint["images"]):
        assert answer["prompt"] == question["text"] and answer["model_id"] == "text_model_llava"
        ours = checkpoint["answer"](question["text"], image, 12)
        assert ours["new_tokens"] > 0 and answer["text"] == ours["answer"].strip()


def test_model_vqa_loader_runs_in_float16_as_on_a_gpu(llava_eval_python, checkpoint, tmp_path):
    questions = write_vqa_questions(tmp_path, checkpoint["images"])
    answers = run_script(llava_eval_python, "model_vqa_loader", checkpoint["model_path"], tmp_path,
                         "--question-file", "questions.jsonl", "--image-folder", str(checkpoint["images"][0].parent),
                         "--max_new_tokens", "8", float32=False)
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    assert all(a["text"] for a in answers)


def test_model_vqa_answers_begin_with_mmzoo_generate(llava_eval_python, checkpoint, tmp_path):
    questions = write_vqa_questions(tmp_path, checkpoint["images"])[:2]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    answers = run_script(llava_eval_python, "model_vqa", checkpoint["model_path"], tmp_path,
                         "--question-file", "questions.jsonl", "--image-folder", str(checkpoint["images"][0].parent))
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    for question, answer, image in zip(questions, answers, checkpoint["images"]):
        assert answer["prompt"] == question["text"]
        assert_begins_with_mmzoo_answer(answer["text"], checkpoint["answer"](question["text"], image, PREFIX_TOKENS))


def test_model_vqa_science_answers_begin_with_mmzoo_generate(llava_eval_python, checkpoint, tmp_path):
    image = checkpoint["images"][1]
    records = [  # ScienceQA as LLaVA's convert_sqa_to_llava writes it: one record with an image, one text-only
        {"id": "4", "image": image.name, "conversations": [
            {"from": "human", "value": "<image>\nContext: A picture of a field.\nWhich animal is shown?\nOptions: (A) a cat (B) a cow"},
            {"from": "gpt", "value": "B"}]},
        {"id": "17", "conversations": [
            {"from": "human", "value": "Context: N/A\nWhich word is a noun?\nOptions: (A) run (B) table"},
            {"from": "gpt", "value": "B"}]},
    ]
    (tmp_path / "llava_test_CQM-A.json").write_text(json.dumps(records))
    answers = run_script(llava_eval_python, "model_vqa_science", checkpoint["model_path"], tmp_path,
                         "--question-file", "llava_test_CQM-A.json", "--image-folder", str(image.parent), "--single-pred-prompt")
    assert [a["question_id"] for a in answers] == ["4", "17"]
    with_image, text_only = answers
    assert with_image["prompt"] == records[0]["conversations"][0]["value"] + "\n" + SINGLE_PRED
    assert text_only["prompt"] == records[1]["conversations"][0]["value"] + "\n" + SINGLE_PRED
    assert_begins_with_mmzoo_answer(with_image["text"], checkpoint["answer"](with_image["prompt"], image, PREFIX_TOKENS))
    assert_begins_with_mmzoo_answer(text_only["text"], checkpoint["answer"](text_only["prompt"], None, PREFIX_TOKENS))


def test_model_vqa_mmbench_answers_begin_with_mmzoo_generate(llava_eval_python, checkpoint, tmp_path):
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]
    rows = [  # MMBench's dev TSV: base64 images; a missing hint and fewer than four options are empty cells
        {"index": 241, "question": "Which object is red?", "hint": "", "A": "the ball", "B": "the box", "C": "", "D": "",
         "answer": "A", "category": "attribute_recognition", "l2-category": "finegrained_perception", "split": "dev",
         "image": base64.b64encode(checkpoint["images"][0].read_bytes()).decode()},
        {"index": 1002, "question": "What is the weather like?", "hint": "Look at the sky.", "A": "sunny", "B": "rainy",
         "C": "snowy", "D": "foggy", "answer": "A", "category": "scene", "l2-category": "coarse_perception", "split": "dev",
         "image": base64.b64encode(checkpoint["images"][2].read_bytes()).decode()},
    ]
    with open(tmp_path / "mmbench_dev_20230712.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    answers = run_script(llava_eval_python, "model_vqa_mmbench", checkpoint["model_path"], tmp_path,
                         "--question-file", "mmbench_dev_20230712.tsv", "--single-pred-prompt", "--lang", "en")
    assert [(a["question_id"], a["round_id"]) for a in answers] == [(241, 0), (1002, 0)]
    assert answers[0]["options"] == ["the ball", "the box"] and answers[1]["option_char"] == ["A", "B", "C", "D"]
    assert answers[0]["prompt"] == "Which object is red?\nA. the ball\nB. the box"
    assert answers[1]["prompt"] == "Look at the sky.\nWhat is the weather like?\nA. sunny\nB. rainy\nC. snowy\nD. foggy"
    for answer, image in zip(answers, [checkpoint["images"][0], checkpoint["images"][2]]):
        ours = checkpoint["answer"](answer["prompt"] + "\n" + SINGLE_PRED, image, PREFIX_TOKENS)
        assert_begins_with_mmzoo_answer(answer["text"], ours)
