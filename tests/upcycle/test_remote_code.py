"""hf folders of MoE layouts no built-in transformers class expresses: mmzoo's modeling code ships in the
folder (auto_map / trust_remote_code), loads without mmzoo, gives the dense logits and round-trips exactly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from upcycle_helpers import TOL, max_diff

from mmzoo import convert, diff, inspect, load_model, read_checkpoint
from mmzoo.upcycle.remote import ARCHITECTURE, AUTO_MAP, FILES, HERE, MODEL_TYPE

CASES = {
    "vision-mixtral": ("llama", dict(style="mixtral", layers="even", targets=["vision"])),
    "vision-shared": ("llama", dict(style="shared", layers="all", targets=["vision"])),
    "projector-mixtral": ("llama", dict(style="mixtral", targets=["projector"])),
    "projector-shared": ("llama", dict(style="shared", targets=["projector"])),
    "modality-all-targets": ("llama", dict(style="modality", num_experts=6, layers="odd", targets=["text", "vision", "projector"])),
    "modality-text": ("llama", dict(style="modality", layers="all")),
    "siglip-qwen2-modality": ("qwen2-siglip", dict(style="modality", layers="all", targets=["text", "vision", "projector"])),
    "biased-llama-mixtral": ("llama-bias", dict(style="mixtral", layers="all")),
    "biased-llama-shared": ("llama-bias", dict(style="shared", layers="odd", targets=["text", "projector"])),
    "phi3-partial-rotary": ("phi3-partial", dict(style="shared", layers="even")),
}


def _moe(**kw):
    options = dict(num_experts=4, top_k=2, style="mixtral", layers="all", targets=["text"])
    options.update(kw)
    return options


def load_remote(path, **kw):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **kw).eval()


@pytest.fixture(scope="module")
def folders(dense, tmp_path_factory):
    """One hf folder per case (written once, read by several tests)."""
    made: dict[str, object] = {}

    def get(case: str):
        if case not in made:
            arch, options = CASES[case]
            path = tmp_path_factory.mktemp("remote") / case
            result = convert(dense(arch).path, path, tgt_fmt="hf", moe=_moe(**options), verify=True)
            made[case] = (path, dense(arch), result)
        return made[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_remote_code_loads_with_transformers_and_matches_dense(folders, case):
    path, ref, result = folders(case)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and config["architectures"] == [ARCHITECTURE] and config["auto_map"] == AUTO_MAP
    assert config["text_config"]["model_type"] == "mmzoo_moe" and config["text_config"]["mmzoo_moe"]["style"] == CASES[case][1]["style"]
    for name in FILES:  # verbatim copies of the code mmzoo runs itself
        assert (path / name).read_bytes() == (HERE / name).read_bytes()
    assert any("trust_remote_code=True" in note for note in result.notes)

    model = load_remote(path)
    assert type(model).__name__ == ARCHITECTURE and type(model).__module__.startswith("transformers_modules.")
    assert max_diff(model, ref) <= TOL
    with torch.no_grad():
        assert float(model(**ref.inputs)["aux_loss"]) > 0
    assert max_diff(load_model(path), ref) <= TOL  # mmzoo reads the same folder (in-process class)


def test_one_implementation_in_process_and_in_folders(dense, out):
    """mmzoo.load_model builds the very class the folder ships (the file moe_modeling re-exports)."""
    from mmzoo.upcycle import moe_modeling

    assert moe_modeling.MoeBlock.__module__ == "mmzoo.upcycle.remote.modeling_mmzoo_moe"
    path = out("internal")
    convert(dense("llama").path, path, tgt_fmt="internal", moe=_moe(style="modality", targets=["text", "projector"]))
    model = load_model(path)
    assert type(model) is moe_modeling.MmzooMoeLlavaForConditionalGeneration
    assert isinstance(model.model.multi_modal_projector, moe_modeling.MoeBlock)


def test_refused_without_trust_remote_code(folders):
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    path, _, _ = folders("vision-mixtral")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=False)
    with pytest.raises(ValueError, match="mmzoo_moe"):  # the dense Llava class cannot even parse the config
        LlavaForConditionalGeneration.from_pretrained(path)
    from transformers import AutoProcessor

    assert type(AutoProcessor.from_pretrained(path, trust_remote_code=True)).__name__ == "LlavaProcessor"


@pytest.mark.parametrize("case", ["modality-all-targets", "biased-llama-shared", "phi3-partial-rotary"])
def test_hf_internal_hf_round_trip_is_bit_exact(folders, out, case):
    path, ref, _ = folders(case)
    internal, back, direct = out("internal"), out("back"), out("direct")
    convert(path, internal, tgt_fmt="internal", verify=True)
    convert(internal, back, tgt_fmt="hf", verify=True)
    assert diff(path, internal)["equal"] and diff(path, back)["equal"]
    first, again = read_checkpoint(path), read_checkpoint(back)
    assert first.format == again.format == "hf"
    assert first.spec.moe == again.spec.moe == read_checkpoint(internal).spec.moe
    assert first.spec.text_config == again.spec.text_config and first.spec.vision_config == again.spec.vision_config
    assert json.loads((path / "config.json").read_text()) == json.loads((back / "config.json").read_text())
    # the same layout upcycled straight to internal has the same canonical tensors and layout
    convert(ref.path, direct, tgt_fmt="internal", moe=_moe(**CASES[case][1]))
    assert diff(direct, internal)["equal"] and read_checkpoint(direct).spec.moe == first.spec.moe
    info = inspect(path)
    assert info["format"] == "hf" and info["moe"]["style"] == CASES[case][1]["style"] and info["text_model_type"] == "mmzoo_moe"


def test_modality_routing_is_exact_with_distinct_experts(folders, tmp_path):
    """Experts made different, so routing matters: the image mask from input_ids, the one from inputs_embeds,
    the transformers-loaded remote class and mmzoo's in-process model all agree; without the mask they differ."""
    path, ref, _ = folders("modality-all-targets")
    model = load_remote(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".experts." in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
        by_ids = model(**ref.inputs).logits
        embeds = model.get_input_embeddings()(ref.inputs["input_ids"])
        by_embeds = model(inputs_embeds=embeds, pixel_values=ref.inputs["pixel_values"], attention_mask=ref.inputs["attention_mask"]).logits
        assert torch.equal(by_ids, by_embeds)
        saved = tmp_path / "trained"
        model.save_pretrained(saved)  # what fine-tuning with transformers would leave
        assert json.loads((saved / "config.json").read_text())["text_config"]["model_type"] == "mmzoo_moe"
        assert float((load_model(saved)(**ref.inputs).logits - by_ids).abs().max()) <= 1e-6
        assert float((load_remote(saved)(**ref.inputs).logits - by_ids).abs().max()) <= 1e-6
        model.model._mmzoo_context.image_token_id = None  # every token routed as text
        assert float((model(**ref.inputs).logits - by_ids).abs().max()) > 1e-4
    assert diff(path, saved)["differences"]  # the experts did change, and mmzoo reads the resaved folder


def test_remote_folder_loads_without_mmzoo(folders, tmp_path):
    """A fresh interpreter where importing mmzoo fails loads the copied folders and gives the dense logits."""
    jobs = []
    for case in ("modality-all-targets", "biased-llama-mixtral"):
        path, ref, _ = folders(case)
        copy = shutil.copytree(path, tmp_path / case)
        torch.save({"inputs": ref.inputs, "logits": ref.logits}, tmp_path / f"{case}.pt")
        jobs.append((str(copy), str(tmp_path / f"{case}.pt")))
    import mmzoo

    source_roots = [os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(mmzoo.__file__)))]
    script = textwrap.dedent(f"""
        import os, sys
        sys.modules["mmzoo"] = None  # any `import mmzoo` now raises ImportError
        # drop the folders that hold mmzoo's source, and only those: a venv inside a clone named mmzoo
        # (/x/mmzoo/.venv/...site-packages) must stay, or torch and transformers go with it
        source_roots = {{os.path.realpath(r) for r in {source_roots!r}}}
        sys.path = [p for p in sys.path if p and os.path.realpath(p) not in source_roots]
        import torch
        from transformers import AutoModelForImageTextToText
        for folder, ref in {jobs!r}:
            data = torch.load(ref)
            model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                logits = model(**data["inputs"]).logits
            print(type(model).__module__, float((logits - data["logits"]).abs().max()))
        assert not [m for m in sys.modules if m.startswith("mmzoo")  and sys.modules[m] is not None]
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        module, delta = line.rsplit(" ", 1)
        assert module.startswith("transformers_modules.") and float(delta) <= TOL
