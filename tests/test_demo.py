"""`mmzoo demo` runs the whole pipeline offline and checks itself."""
from __future__ import annotations

from cli_helpers import run_cli


def test_demo_runs_end_to_end(tmp_path):
    code, stdout, stderr = run_cli("demo", "-o", str(tmp_path / "demo"))
    assert code == 0, stderr[-3000:]
    assert "bit-exact" in stdout and "max |Δ| = 0.0e+00" in stdout.replace("\n", "")
    assert (tmp_path / "demo" / "llava-internal" / "mmzoo.yaml").is_file()
    assert (tmp_path / "demo" / "llava-repo" / "text_model_llava" / "config.json").is_file()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    code, _, stderr = run_cli("demo", "-o", str(tmp_path / "precious"))
    assert code == 2 and "not an mmzoo demo folder" in stderr
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"
