"""`mmzoo demo` runs the whole pipeline offline and checks itself."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_helpers import mmzoo_command, run_cli
from process_tree import run_bounded


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# What third-party libraries print unasked (mmzoo keeps it off the terminal; --debug shows it)
NOISE = ("[WARNING]", "FutureWarning", "UserWarning", "built successfully", "Loading checkpoint shards",
         "Writing model shards", "it/s]", "OMP_NUM_THREADS")


def test_quickstart_then_the_readme_training_example(tmp_path, monkeypatch, capsys):
    """The README's first hour, as printed: `mmzoo demo -o mmzoo-demo`, then the CPU training example with the
    tiny configs (from the same folder), then an export into a folder whose parent does not exist yet."""
    # as a user's shell has it: without the test suite's DS_ACCELERATOR and OMP_NUM_THREADS (torchrun prints a banner
    # when OMP_NUM_THREADS is unset, which mmzoo train must prevent: NOISE)
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "OMP_NUM_THREADS")}
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "torch-extensions")  # must stay empty: nothing compiled on CPU

    def run(*args, timeout=600):
        proc = run_bounded(mmzoo_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
        for noise in NOISE:
            assert noise not in proc.stdout + proc.stderr, (args, noise, proc.stdout[-2000:], proc.stderr[-2000:])
        return proc.stdout

    stdout = run("demo", "-o", "mmzoo-demo")
    assert "bit-exact" in stdout and "max |Δ| = 0.0e+00" in stdout.replace("\n", "")
    assert (tmp_path / "mmzoo-demo" / "llava-internal" / "mmzoo.yaml").is_file()
    assert (tmp_path / "mmzoo-demo" / "llava-repo" / "text_model_llava" / "config.json").is_file()
    assert "train distill" in stdout and "kd_loss" in stdout
    assert (tmp_path / "mmzoo-demo" / "routing" / "routing.json").is_file()  # analyze-routing of the upcycled MoIIE
    assert (tmp_path / "mmzoo-demo" / "plots" / "training.png").stat().st_size > 10_000  # mmzoo plot of the demo's runs
    flat = " ".join(stdout.split())  # rich wraps long lines at the terminal width
    assert "train preference (kto_pair" in flat and "reward margin" in flat
    for name in ("tiny-pretrain", "tiny-sft", "tiny-moe", "tiny-distill", "tiny-preference"):  # every tiny config reads what the demo wrote
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        for path in (cfg["model"], cfg["data"]["path"], cfg["data"]["images"],
                     *filter(None, [cfg.get("teacher"), cfg.get("reference")])):
            assert (tmp_path / path).exists(), (name, path)
    stdout = run("train", "--params", str(CONFIGS / "tiny-sft.yaml"), "--nproc", "2",
                 "--set", "train.max_steps=2", "--set", "train.save_every=2")
    assert "done" in stdout
    stdout = run("export", "runs/tiny-sft", "--tgt-fmt", "hf", "-o", "exports/tiny-sft-hf")
    assert (tmp_path / "exports" / "tiny-sft-hf" / "config.json").is_file()
    assert not [p for p in (tmp_path / "torch-extensions").rglob("*") if p.is_file()]
    _run_the_readme_examples(tmp_path, monkeypatch, capsys)


README = Path(__file__).resolve().parents[1] / "README.md"
# README commands this test does not run: training and export (run above, or GPU / multi-node), the real Hub's
# repositories (the `me/…` ones run against tests/hub's server), the demo itself, and mergekit-style experts from
# fine-tuned LLMs the demo does not have
NOT_RUN = ("mmzoo train", "mmzoo export", "llava-hf/llava-1.5-7b-hf", "mmzoo demo", "--moe-experts-from")


def readme_commands() -> list[tuple[str, list[str]]]:
    """Every `mmzoo …` line of the README's bash blocks, continuation lines joined, in the README's order."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for line in line.split(" && "):
                line = line.strip()
                if line.startswith("mmzoo ") and not any(skip in line for skip in NOT_RUN):
                    commands.append((line, shlex.split(line, comments=True)[1:]))
    return commands


def _run_the_readme_examples(tmp_path, monkeypatch, capsys):
    """After the quickstart, every README example runs as printed from the same folder (in this process: one
    import of torch for all of them): exit 0, or 1 where its comment says so (`mmzoo diff`), never a traceback."""
    from mmzoo.cli import main

    commands = readme_commands()
    assert len(commands) >= 25, commands  # convert, init, inspect, diff, formats, upcycle, routing, preprocess, …
    monkeypatch.chdir(tmp_path)
    saved = dict(os.environ)
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "hub"))
    from hub_server import HubServer, HubState

    hub = HubServer(HubState({"hf_demo": "me"})).start()  # the README's offline Hub: `me/…` repositories
    hub_env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_demo", "HF_HUB_OFFLINE": "0",
               "HF_TOKEN_PATH": str(tmp_path / "no-login-cache" / "token")}
    try:
        for line, args in commands:
            if args[0] == "hub":  # a subprocess: huggingface_hub caches its offline flag and endpoint at import
                proc = subprocess.run(mmzoo_command(*args), env=hub_env, capture_output=True, text=True, timeout=300)
                assert proc.returncode == 0 and "Traceback" not in proc.stderr, (line, proc.stderr[-2000:])
                continue
            with pytest.raises(SystemExit) as exit_:
                main(args)
                raise SystemExit(0)
            out, err = capsys.readouterr()
            expected = 1 if "exit 1" in line else 0
            assert exit_.value.code in (expected, None), (line, exit_.value.code, err[-2000:], out[-2000:])
            assert "Traceback" not in err, (line, err[-2000:])
        import re

        api = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
        exec(compile(api, "README.md (Python API)", "exec"), {})
        assert (tmp_path / "api-moe" / "config.json").is_file() and (tmp_path / "api-curves.png").is_file()
    finally:
        hub.stop()
        os.environ.clear()
        os.environ.update(saved)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    code, _, stderr = run_cli("demo", "-o", str(tmp_path / "precious"))
    assert code == 2 and "not an mmzoo demo folder" in stderr
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"
