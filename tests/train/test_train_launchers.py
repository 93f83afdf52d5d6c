"""The launchers mmzoo builds, run for real on this machine: the DeepSpeed launcher on one node, and two
"nodes" on localhost (two `mmzoo train --node-rank` commands started side by side, as a scheduler starts
one per machine) through torchrun's static rendezvous and through the DeepSpeed launcher with --no_ssh.
World size 2 everywhere, so each must reproduce the session's 2-process torchrun run of the same config (the
ZeRO-2 one of test_train_multi, conftest.py: two_process_runs) exactly."""
from __future__ import annotations

import subprocess

import pytest

from cli_helpers import free_port, mmzoo_command
from train_helpers import metrics, mmzoo_env, run_mmzoo, two_process_sections

KEYS = ("step", "loss", "lm_loss", "lr", "grad_norm", "tokens")


SECTIONS = two_process_sections(2)  # the config of the reference run, for every launcher


@pytest.fixture(scope="module")
def reference(two_process_runs):
    """The same run through torchrun, one node, two processes."""
    return two_process_runs[2]


def _curve(run):
    return [[r[k] for k in KEYS] for r in metrics(run)]


def test_deepspeed_launcher_one_node(ws, reference):
    params = ws.write("launch-ds", **SECTIONS)
    proc = run_mmzoo("train", "--params", str(params), "--nproc", "2", "--launcher", "deepspeed",
                     "--master-port", str(free_port()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deepspeed.launcher.runner" in proc.stdout
    assert _curve(ws.root / "runs" / "launch-ds") == _curve(reference)


def _two_nodes(ws, name: str, *extra: str) -> None:
    params = ws.write(name, **SECTIONS)
    nodes = [subprocess.Popen(mmzoo_command("train", "--params", str(params), "--nproc", "1", "--num-nodes", "2",
                                            "--node-rank", str(rank), *extra),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mmzoo_env()) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}"


def test_two_nodes_with_torchrun(ws, reference):
    _two_nodes(ws, "launch-tr2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()))
    assert _curve(ws.root / "runs" / "launch-tr2") == _curve(reference)


def test_two_nodes_with_deepspeed_launcher_without_ssh(ws, reference, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")  # names are only labels with --no_ssh
    _two_nodes(ws, "launch-ds2", "--hostfile", str(hostfile), "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()))
    run = ws.root / "runs" / "launch-ds2"
    assert _curve(run) == _curve(reference)

    from mmzoo.train.export import export
    from safetensors.torch import load_file

    export(run, tmp_path / "two-nodes", tgt_fmt="internal")
    export(reference, tmp_path / "one-node", tgt_fmt="internal")
    for path in sorted((tmp_path / "one-node").rglob("*.safetensors")):
        mine, theirs = load_file(tmp_path / "two-nodes" / path.relative_to(tmp_path / "one-node")), load_file(path)
        assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in theirs), path.name
