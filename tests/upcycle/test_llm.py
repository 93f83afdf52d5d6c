"""Plain causal-LM upcycling (mmzoo.converters.llm): a Llama / Mistral / Qwen2 / Phi-3 folder in, a Mixtral /
Qwen2-MoE folder out that AutoModelForCausalLM loads with no missing weights and the dense logits;
``--moe-experts-from`` takes each expert's MLPs from another fine-tuned LLM of the same family."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from upcycle_helpers import TOL

from mmzoo import convert
from mmzoo.errors import MmzooError, UpcycleError


class DenseLlm:
    def __init__(self, path: Path, arch: str, seed: int):
        import torch

        from mmzoo.demo.tiny import build_llm

        self.path = path
        model = build_llm(path, arch, seed=seed)
        self.input_ids = torch.randint(4, 300, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.logits = model(input_ids=self.input_ids).logits


@pytest.fixture(scope="session")
def llm(tmp_path_factory):
    cache: dict[tuple[str, int], DenseLlm] = {}

    def get(arch: str = "llama", seed: int = 0) -> DenseLlm:
        if (arch, seed) not in cache:
            cache[arch, seed] = DenseLlm(tmp_path_factory.mktemp(f"llm-{arch}-{seed}") / "llm", arch, seed)
        return cache[arch, seed]

    return get


def _moe(**kw):
    options = dict(num_experts=4, top_k=2, style="mixtral", layers="all")
    options.update(kw)
    return options


def load_causal_lm(path: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "phi3"])
@pytest.mark.parametrize("style,layers", [("mixtral", "all"), ("shared", "all"), ("mixtral", "odd")])
def test_plain_llm_upcycles_dense_equivalent(llm, out, arch, style, layers):
    ref = llm(arch)
    path = out("moe-llm")
    result = convert(ref.path, path, tgt_fmt="hf", moe=_moe(style=style, layers=layers), verify=True)
    assert result.verified
    model = load_causal_lm(path)
    mixtral = style == "mixtral" and layers == "all" and arch in ("llama", "mistral")
    assert type(model).__name__ == ("MixtralForCausalLM" if mixtral else "Qwen2MoeForCausalLM")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [type(model).__name__]
    assert config["mmzoo_moe"]["num_experts"] == 4 and config["mmzoo_moe"]["base_model_type"] == arch
    assert float((logits(model, ref.input_ids) - ref.logits).abs().max()) <= TOL
    # the source is untouched, the tokenizer travels along
    assert (path / "tokenizer.json").read_bytes() == (ref.path / "tokenizer.json").read_bytes()
    if layers == "odd":
        assert config["mlp_only_layers"] == [0]


def test_experts_from_several_llms(llm, out):
    """Expert e's MLPs are byte copies of the e-th fine-tuned LLM's; the rest is the base's."""
    from safetensors import safe_open

    base = llm("llama", 0)
    tuned = [llm("llama", seed) for seed in (11, 12, 13, 14)]
    path = out("merged")
    convert(base.path, path, tgt_fmt="hf", moe=_moe(router_init="zeros"), moe_experts_from=[t.path for t in tuned], verify=True)
    model = load_causal_lm(path)
    assert type(model).__name__ == "MixtralForCausalLM"

    def tensor(folder: Path, name: str):
        with safe_open(folder / "model.safetensors", "pt") as f:
            return f.get_tensor(name)

    for e, source in enumerate(tuned):
        for layer in (0, 1):
            for w, dense in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                got = tensor(path, f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight")
                assert got.equal(tensor(source.path, f"model.layers.{layer}.mlp.{dense}.weight"))
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert tensor(path, name).equal(tensor(base.path, name))
    # zero routers: uniform softmax, top-2 picks experts 0 and 1 -> their average; the model is not the base
    assert float((logits(model, base.input_ids) - base.logits).abs().max()) > 1e-3
    assert json.loads((path / "config.json").read_text())["mmzoo_moe"]["experts_from"] == [str(t.path) for t in tuned]


def test_experts_from_the_base_itself_is_dense_equivalent(llm, out):
    base = llm("qwen2", 0)
    path = out("self")
    convert(base.path, path, tgt_fmt="hf", moe=_moe(num_experts=2, top_k=1, style="shared"), moe_experts_from=[base.path, base.path])
    assert float((logits(load_causal_lm(path), base.input_ids) - base.logits).abs().max()) <= TOL


def _retokenized(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose tokenizer maps one token to a different string (same vocabulary size)."""
    shutil.copytree(src, dst)
    data = json.loads((dst / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 100)
    vocab["mmzoo-other-token"] = vocab.pop(token)
    (dst / "tokenizer.json").write_text(json.dumps(data))
    return dst


def test_experts_from_refuses_mismatches(llm, out, tmp_path):
    base = llm("llama", 0)
    other = llm("llama", 11)
    with pytest.raises(UpcycleError, match="names 2 checkpoints but --moe-experts is 4"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(), moe_experts_from=[other.path, other.path])
    with pytest.raises(UpcycleError, match="is a qwen2 model, the base is llama"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(num_experts=2), moe_experts_from=[other.path, llm("qwen2").path])
    with pytest.raises(UpcycleError, match="different tokenizer"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(num_experts=2),
                moe_experts_from=[other.path, _retokenized(other.path, tmp_path / "retok")])
    from transformers import AutoModelForCausalLM

    from mmzoo.demo.tiny import text_config

    wide = tmp_path / "wide"  # a genuinely wider MLP, same tokenizer
    vocab = json.loads((other.path / "config.json").read_text())["vocab_size"]
    AutoModelForCausalLM.from_config(text_config("llama", vocab_size=vocab, intermediate_size=128)).save_pretrained(wide)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(other.path / name, wide / name)
    with pytest.raises(UpcycleError, match=r"mlp\..* has shape \[.*128.*\], the base's is \[.*96.*\]"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(num_experts=2), moe_experts_from=[other.path, wide])


@pytest.mark.parametrize("options,fmt,message", [
    (dict(), "internal", "use --tgt-fmt hf"),
    (dict(style="modality"), "hf", "a plain LLM has none"),
    (dict(targets=["vision"]), "hf", "--moe-target must be text"),
])
def test_plain_llm_refusals(llm, out, options, fmt, message):
    path = out()
    with pytest.raises(UpcycleError, match=message.replace("-", r"\-")):
        convert(llm("llama").path, path, tgt_fmt=fmt, moe=_moe(**options))
    assert not path.exists()


def test_llm_with_biases_is_refused_in_one_line(llm, out, tmp_path):
    from mmzoo.demo.tiny import build_llm

    src = tmp_path / "biased"
    build_llm(src, "llama")
    config = json.loads((src / "config.json").read_text())
    config["mlp_bias"] = True
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UpcycleError, match="no built-in transformers MoE class expresses this LLM once upcycled \\(MLP biases\\)"):
        convert(src, out(), tgt_fmt="hf", moe=_moe())


def test_experts_from_a_missing_folder_is_one_line(llm, out, tmp_path):
    with pytest.raises(UpcycleError, match="--moe-experts-from: not a model folder"):
        convert(llm("llama").path, out(), tgt_fmt="hf", moe=_moe(num_experts=2), moe_experts_from=[llm("llama").path, tmp_path / "nope"])


def test_experts_from_without_moe_is_refused(llm, out):
    with pytest.raises(MmzooError, match="--moe-experts-from needs --moe-experts"):
        convert(llm("llama").path, out(), tgt_fmt="hf", moe_experts_from=[llm("llama").path])


def test_cli(llm, out):
    base, tuned = llm("mistral", 0), llm("mistral", 21)
    path = out("cli")
    cmd = [sys.executable, "-m", "mmzoo.cli", "convert", str(base.path), "-o", str(path), "--tgt-fmt", "hf",
           "--moe-experts", "2", "--moe-top-k", "1", "--verify"]
    ok = subprocess.run(cmd + ["--moe-experts-from", str(base.path), "--moe-experts-from", str(tuned.path)],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "MixtralForCausalLM" in ok.stdout and "verified" in ok.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    plain = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", str(base.path), "-o", str(out()), "--tgt-fmt", "hf"],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "mmzoo init" in plain.stderr  # converting (not upcycling) a plain LLM: still a VLM tool


PROMPTS = [["the cat sat on the mat", "a small cat"], ["hello world"], {"positive_prompts": ["river water"], "negative_prompts": ["dry sand"]},
           ["numbers one two three"]]


def _layer_inputs(model, tokenizer, text: str, layer: int, last: bool):
    """The dense model's input to decoder layer ``layer`` (a forward pre-hook: independent of output_hidden_states)."""
    import torch

    seen = {}

    def grab(module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    handle = model.model.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        ids = tokenizer(tokenizer.bos_token + text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    h = seen["h"][0].float()
    return h[-1] if last else h.mean(0)


@pytest.mark.parametrize("mode", ["hidden", "hidden_avg"])
def test_router_init_hidden_from_prompts(llm, out, tmp_path, mode):
    import torch
    import yaml
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = llm("llama")
    prompts = tmp_path / "prompts.yaml"  # mergekit-moe's config shape
    prompts.write_text(yaml.safe_dump({"base_model": str(base.path), "gate_mode": "hidden",
                                       "experts": [p if isinstance(p, dict) else {"source_model": "x", "positive_prompts": p} for p in PROMPTS]}))
    path = out("hidden")
    convert(base.path, path, tgt_fmt="hf", moe=_moe(router_init=mode, router_prompts=str(prompts)), verify=True)
    model = load_causal_lm(path)
    assert float((logits(model, base.input_ids) - base.logits).abs().max()) <= TOL  # experts are copies: still dense
    dense = AutoModelForCausalLM.from_pretrained(base.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    last = mode == "hidden"
    with safe_open(path / "model.safetensors", "pt") as f:
        for layer in (0, 1):
            gate = f.get_tensor(f"model.layers.{layer}.block_sparse_moe.gate.weight")
            for e, entry in enumerate(PROMPTS):
                pos = entry["positive_prompts"] if isinstance(entry, dict) else entry
                neg = entry.get("negative_prompts", []) if isinstance(entry, dict) else []
                vec = torch.stack([_layer_inputs(dense, tokenizer, t, layer, last) for t in pos]).mean(0)
                if neg:
                    vec = vec - torch.stack([_layer_inputs(dense, tokenizer, t, layer, last) for t in neg]).mean(0)
                assert torch.allclose(gate[e], vec / vec.norm(), atol=1e-5), (layer, e)
    assert json.loads((path / "config.json").read_text())["mmzoo_moe"]["router_init"] == mode


def test_router_prompts_errors(llm, out, tmp_path, dense):
    base = llm("llama")
    three = tmp_path / "three.json"
    three.write_text(json.dumps([["a"], ["b"], ["c"]]))
    with pytest.raises(UpcycleError, match="lists 3 experts but --moe-experts is 4"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(router_init="hidden", router_prompts=str(three)))
    with pytest.raises(UpcycleError, match="needs --router-prompts"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(router_init="hidden"))
    with pytest.raises(UpcycleError, match="--router-prompts is used by --router-init hidden"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(router_prompts=str(three)))
    empty = tmp_path / "empty.yaml"
    empty.write_text("- []\n- [b]\n")
    with pytest.raises(UpcycleError, match="expert 0 has no positive prompts"):
        convert(base.path, out(), tgt_fmt="hf", moe=_moe(num_experts=2, router_init="hidden", router_prompts=str(empty)))
    with pytest.raises(UpcycleError, match="takes a plain LLM folder"):
        convert(dense("llama").path, out(), tgt_fmt="hf", moe=_moe(num_experts=3, router_init="hidden", router_prompts=str(three)))


def test_an_upcycled_llm_assembles_into_an_moe_vlm(llm, out, tmp_path):
    """`mmzoo init` takes the upcycled LLM as it is: the Llava keeps the MoE layout and the routers."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from mmzoo import read_checkpoint
    from mmzoo.converters.assemble import init_model
    from mmzoo.demo.tiny import build_vision

    base = llm("mistral")
    moe_llm = out("moe-llm")
    convert(base.path, moe_llm, tgt_fmt="hf", moe=_moe(layers="all"))
    build_vision(tmp_path / "clip")
    vlm = out("vlm")
    init_model(tmp_path / "clip", moe_llm, vlm, tgt_fmt="hf")
    assert read_checkpoint(vlm).spec.moe["num_experts"] == 4
    model = LlavaForConditionalGeneration.from_pretrained(vlm)
    assert type(model.model.language_model).__name__ == "MixtralModel"
    assert torch.equal(model.model.language_model.layers[1].mlp.gate.weight, load_causal_lm(moe_llm).model.layers[1].mlp.gate.weight)
