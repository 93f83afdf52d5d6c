"""DeepSpeed's pickled checkpoint files are loaded with torch's weights_only unpickler and an allowlist:
a crafted file whose payload would create a file is refused in one line, and the file is never created."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mmzoo.cli import main
from mmzoo.errors import MmzooError
from mmzoo.train import pickles


def run_cli(*args: str) -> tuple[int, str, str]:
    """The CLI entry point in this process (torch and DeepSpeed are imported already: seconds saved per call)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    return exc.value.code or 0, out.getvalue(), err.getvalue()


class _Payload:
    """Unpickling this calls open(marker, "w"): the file exists afterwards iff the pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path, marker, **extra):
    torch.save({"module": {"w": torch.ones(2)}, "payload": _Payload(marker), **extra}, path)


def test_the_payload_runs_with_a_plain_pickle_load(tmp_path):  # the crafted file really is dangerous
    marker = tmp_path / "pwned"
    _crafted(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_real_deepspeed_types_load_and_anything_else_is_refused(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "fp32": [torch.arange(4.0)]}
    torch.save(state, tmp_path / "optim_states.pt")
    pickles.check_file(tmp_path / "optim_states.pt")
    loaded = pickles.load(tmp_path / "optim_states.pt")
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and loaded["loss_scaler"].cur_scale == 1.0
    assert loaded["param_slice_mappings"][0]["w"].numel == 4 and torch.equal(loaded["fp32"][0], torch.arange(4.0))

    marker = tmp_path / "pwned"
    _crafted(tmp_path / "evil.pt", marker)
    for check in (pickles.check_file, pickles.load):
        with pytest.raises(pickles.UnsafeCheckpoint, match="refusing to load evil.pt: it holds the type io.open"):
            check(tmp_path / "evil.pt")
    assert not marker.exists()


def test_deepspeed_own_loads_become_weights_only(tmp_path):
    """DeepSpeed calls torch.load(weights_only=False) itself; inside weights_only_loads() it cannot."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "pwned"
    _crafted(tmp_path / "evil.pt", marker)
    with pickles.weights_only_loads():
        with pytest.raises(pickles.UnsafeCheckpoint, match="io.open"):
            TorchCheckpointEngine().load(str(tmp_path / "evil.pt"), map_location="cpu")
    assert not marker.exists()
    assert torch.load.__module__ == "torch.serialization"  # restored afterwards


@pytest.fixture
def run_dir(tiny, tmp_path):
    """A run folder as `mmzoo train` leaves it (meta/ from the real source checkpoint) with one checkpoint."""
    from mmzoo.converters.pipeline import read_checkpoint
    from mmzoo.train.checkpoint import save_meta

    run = tmp_path / "run"
    save_meta(read_checkpoint(tiny.hf()), run)
    (run / "checkpoints" / "step_0000001").mkdir(parents=True)
    return run


@pytest.mark.parametrize("stage, evil", [(0, "mp_rank_00_model_states.pt"), (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
                                         (3, "zero_pp_rank_0_mp_rank_00_model_states.pt")])
def test_export_refuses_a_crafted_checkpoint(run_dir, tmp_path, stage, evil):
    tag = run_dir / "checkpoints" / "step_0000001"
    (tag / "COMPLETE").write_text(json.dumps({"zero_stage": stage, "world_size": 1}))
    torch.save({"module": {}}, tag / "mp_rank_00_model_states.pt")
    marker = tmp_path / "pwned"
    _crafted(tag / evil, marker)
    out = tmp_path / "out"
    code, _, stderr = run_cli("export", str(run_dir), "-o", str(out))
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"refusing to load {evil}: it holds the type io.open" in stderr
    assert not marker.exists() and not out.exists()


def test_universal_conversion_refuses_crafted_files(run_dir, tmp_path):
    from mmzoo.train.checkpoint import universal_checkpoint, universal_path

    tag = run_dir / "checkpoints" / "step_0000001"
    (tag / "COMPLETE").write_text(json.dumps({"zero_stage": 2, "world_size": 2}))
    marker = tmp_path / "pwned"
    _crafted(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    with pytest.raises(pickles.UnsafeCheckpoint, match="zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        universal_checkpoint(tag)
    # A universal form that arrived with the run folder is checked before DeepSpeed loads it on resume.
    shutil.rmtree(tag)
    tag.mkdir()
    (tag / "COMPLETE").write_text("{}")
    converted = universal_path(tag)
    (converted / "zero" / "w").mkdir(parents=True)
    (converted / "COMPLETE").write_text("{}")
    _crafted(converted / "zero" / "w" / "fp32.pt", marker)
    with pytest.raises(pickles.UnsafeCheckpoint, match="fp32.pt"):
        universal_checkpoint(tag)
    assert not marker.exists()


def test_export_refuses_run_metadata_linking_outside(run_dir, tmp_path):
    tokenizer = run_dir / "meta" / "tokenizer" / "tokenizer.json"
    tokenizer.unlink()
    tokenizer.symlink_to("/etc/passwd")
    out = tmp_path / "out"
    code, _, stderr = run_cli("export", str(run_dir), "-o", str(out))
    assert code == 2 and "tokenizer.json is a symlink to /etc/passwd, outside the checkpoint folder" in stderr, stderr
    assert not out.exists()


def _deflated(path, state):
    """``state`` saved by torch, then re-zipped with its entries deflated: 64 MiB of zeros in about 64 KB."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save(state, buffer)
    original = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info in original.infolist():
            archive.writestr(info.filename, original.read(info.filename))


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(tmp_path):
    """torch.load inflates a deflated storage in memory: a 1 MB crafted .pt loaded 1 GiB (1.3 GB peak RSS measured)."""
    bomb = tmp_path / "mp_rank_00_model_states.pt"
    _deflated(bomb, {"module": {"w": torch.zeros(16 << 20)}})
    assert bomb.stat().st_size < 1 << 20
    for check in (pickles.check_file, pickles.check_folder):
        with pytest.raises(MmzooError, match="is compressed .*torch.save never compresses.*zip bomb"):
            check(bomb if check is pickles.check_file else tmp_path)
    plain = tmp_path / "plain" / "mp_rank_00_model_states.pt"
    plain.parent.mkdir()
    torch.save({"module": {"w": torch.zeros(4)}}, plain)
    pickles.check_file(plain)  # what torch.save writes is never compressed


def test_a_zip_bomb_bin_checkpoint_is_one_line(tiny, tmp_path):
    from safetensors.torch import load_file

    src = tmp_path / "src"
    shutil.copytree(tiny.hf(), src)
    state = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    _deflated(src / "pytorch_model.bin", {**state, "junk": torch.zeros(16 << 20)})
    out = tmp_path / "out"
    code, _, stderr = run_cli("convert", str(src), "-o", str(out), "--tgt-fmt", "internal")
    assert code == 2 and stderr.count("\n") == 1 and "pytorch_model.bin: entry 'archive/data.pkl' is compressed" in stderr, stderr
    assert not out.exists()


@pytest.mark.parametrize("stage, files", [
    (2, {"mp_rank_00_model_states.pt": {"module": {}}, "zero_pp_rank_0_mp_rank_00_optim_states.pt": {"x": 1}}),
    (2, {"mp_rank_00_model_states.pt": {"module": {}, "param_shapes": [{"w": [4]}], "buffer_names": [],
                                        "frozen_param_shapes": None, "shared_params": [], "ds_version": "0.19.8"},
         "zero_pp_rank_0_mp_rank_00_optim_states.pt": {"optimizer_state_dict": {
             "zero_stage": 2, "partition_count": 1, "single_partition_of_fp32_groups": [torch.ones(4)]}, "ds_config": {}}}),
    (3, {"zero_pp_rank_0_mp_rank_00_model_states.pt": {"module": {}}, "zero_pp_rank_0_mp_rank_00_optim_states.pt": {"x": 1}}),
], ids=["zero2-garbage", "zero2-wrong-types", "zero3-garbage"])
def test_export_of_a_zero_folder_deepspeed_cannot_read_is_one_line(run_dir, tmp_path, stage, files):
    """Safe pickles of the wrong shape: DeepSpeed's zero_to_fp32 raised ValueError / AttributeError tracebacks."""
    tag = run_dir / "checkpoints" / "step_0000001"
    (tag / "COMPLETE").write_text(json.dumps({"zero_stage": stage, "world_size": 1}))
    for name, content in files.items():
        torch.save(content, tag / name)
    out = tmp_path / "out"
    code, _, stderr = run_cli("export", str(run_dir), "-o", str(out))
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert "DeepSpeed's zero_to_fp32 cannot load this ZeRO checkpoint (" in stderr, stderr
    assert not out.exists()
