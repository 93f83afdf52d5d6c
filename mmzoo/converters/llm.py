"""Plain causal-LM upcycling: a Llama / Mistral / Qwen2 / Phi-3 folder in, a Mixtral or Qwen2-MoE
``*ForCausalLM`` folder out (``mmzoo convert LLM -o OUT --tgt-fmt hf --moe-experts N``).

The same lazy transform as the VLM path (``styles.expand_site``): experts are byte ranges of the dense
file, routers are seeded computed tensors, so the output is dense-equivalent at init and loads with
``AutoModelForCausalLM``. Names go dense-native -> canonical (the LLM's own table) -> the MoE
architecture's native names (``mmzoo.archs.moe``), so Phi-3's fused ``qkv_proj`` / ``gate_up_proj``
are split exactly as for Llava. ``experts_from`` builds expert ``e`` from the ``e``-th of several
fine-tuned dense checkpoints (mergekit-moe's use): attention, embeddings and norms come from the base.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..archs import TEXT_CLASSES, text_table
from ..archs.moe import dense_mlp_names
from ..errors import MmzooError, UpcycleError
from ..io.checkpoint import parse_size, read_weights, write_weights
from ..io.tensors import Planned, digest
from ..checkpoint.locate import read_json
from ..checkpoint.spec import find_tokenizer_files
from ..upcycle.options import UpcycleOptions, parse_layers
from ..upcycle.styles import FIT_TYPES, expand_site, hf_arch_for, layout_for, moe_text_config

EXTRA_FILES = ("generation_config.json",)


@dataclass
class LlmCheckpoint:
    """A dense or upcycled causal LM: its config.json, tensors under canonical text names (``model.…``,
    ``lm_head.…``, as ``text_model.`` inside a Llava), and the files copied along."""

    config: dict[str, Any]
    tensors: dict[str, Planned]
    path: Path
    tokenizer_files: dict[str, Path] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))


def is_plain_llm(path: str | Path) -> bool:
    """A causal-LM folder of an architecture mmzoo upcycles (no ``vision_config``: not a VLM)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = read_json(config)
    except MmzooError:
        return False
    return data.get("model_type") in FIT_TYPES and "vision_config" not in data and "text_config" not in data


def read_llm(path: str | Path) -> LlmCheckpoint:
    root = Path(path)
    config = read_json(root / "config.json")
    base = config.get("model_type")
    if base not in FIT_TYPES:
        raise UpcycleError(f"model_type {base!r} is not an LLM mmzoo upcycles ({', '.join(FIT_TYPES)})", path=root)
    native = {name: Planned.of(src) for name, src in read_weights(root).items()}
    tensors = text_table(base, str(root)).to_canonical(native, config, where=str(root))
    extra = {n: root / n for n in EXTRA_FILES if (root / n).is_file()}
    return LlmCheckpoint(config, tensors, root, find_tokenizer_files(root), extra)


def check_same_family(base: LlmCheckpoint, other: LlmCheckpoint) -> None:
    """``--moe-experts-from``: every expert source has the base's architecture, shapes and tokenizer."""
    if other.model_type != base.model_type:
        raise UpcycleError(f"is a {other.model_type} model, the base is {base.model_type}; experts must share the architecture", path=other.path)
    for name, planned in base.tensors.items():
        theirs = other.tensors.get(name)
        if theirs is None:
            raise UpcycleError(f"has no tensor {name!r} (the base has it); experts must share the architecture", path=other.path)
        if tuple(theirs.shape) != tuple(planned.shape):
            raise UpcycleError(f"tensor {name!r} has shape {list(theirs.shape)}, the base's is {list(planned.shape)}", path=other.path)
        if theirs.dtype != planned.dtype:
            raise UpcycleError(f"tensor {name!r} is {theirs.dtype}, the base's is {planned.dtype} (convert with --dtype first)", path=other.path)
    if _tokenizer_digest(other) != _tokenizer_digest(base):
        raise UpcycleError("has a different tokenizer from the base (tokenizer.json / tokenizer.model / vocab differ); "
                           "experts must share the tokenizer", path=other.path)


def _tokenizer_digest(ckpt: LlmCheckpoint) -> str:
    """The vocabulary's identity: the files that define the token ids (not the chat template)."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt"):
        if name in ckpt.tokenizer_files:
            h.update(name.encode() + b"\0" + ckpt.tokenizer_files[name].read_bytes())
    return h.hexdigest()


def upcycle_llm(ckpt: LlmCheckpoint, opts: UpcycleOptions, experts_from: list[LlmCheckpoint] | None = None) -> LlmCheckpoint:
    """A new lazy LLM whose selected MLPs are MoE blocks (dense-equivalent when every expert is the base's)."""
    cfg, base = ckpt.config, ckpt.model_type
    if tuple(opts.targets) != ("text",):
        raise UpcycleError("a plain LLM has no vision encoder or projector: --moe-target must be text", path=ckpt.path)
    if opts.style == "modality":
        raise UpcycleError("--moe-style modality routes image tokens apart; a plain LLM has none (use mixtral or shared)", path=ckpt.path)
    layers = parse_layers(opts.layers, cfg["num_hidden_layers"], "LLM")
    hf_arch, why = hf_arch_for(cfg, base, opts.style, opts.targets, layers, opts.router)
    if hf_arch is None:
        raise UpcycleError(f"no built-in transformers MoE class expresses this LLM once upcycled ({why}); "
                           "upcycle it inside a Llava (mmzoo init) to get mmzoo's remote-code model", path=ckpt.path)
    if experts_from is not None:
        if len(experts_from) != opts.num_experts:
            raise UpcycleError(f"--moe-experts-from names {len(experts_from)} checkpoints but --moe-experts is {opts.num_experts}")
        for other in experts_from:
            check_same_family(ckpt, other)
    tensors = dict(ckpt.tensors)
    wanted = dense_mlp_names("text", cfg, {})
    sources = [other.tensors for other in experts_from] if experts_from is not None else None
    for layer in layers:
        expand_site(tensors, f"model.layers.{layer}.mlp.", "text", cfg["hidden_size"], wanted, opts, hf_arch,
                    where=ckpt.path, experts_from=sources)
    if opts.hidden_router:
        tensors.update(hidden_routers(ckpt, opts, layers, {n: tensors[n].dtype for n in tensors if n.endswith("mlp.gate.weight")}))
    layout = layout_for(opts, layers, [], hf_arch, why, base)
    if opts.hidden_router:
        layout["router_prompts"] = str(opts.router_prompts)
    if experts_from is not None:
        layout["experts_from"] = [str(other.path) for other in experts_from]
    config = moe_text_config(cfg, base, layout)
    config["architectures"] = [TEXT_CLASSES[hf_arch]]
    return LlmCheckpoint(config, tensors, ckpt.path, ckpt.tokenizer_files, ckpt.extra_files)


def hidden_routers(ckpt: LlmCheckpoint, opts: UpcycleOptions, layers: list[int], dtypes: dict[str, str]) -> dict[str, Planned]:
    """The routers of ``--router-init hidden``: rows from the dense model's hidden states on each expert's prompts."""
    from ..io.dtypes import to_torch
    from ..io.tensors import Source
    from ..upcycle.router_prompts import hidden_router_rows, load_prompts

    rows = hidden_router_rows(ckpt.path, load_prompts(opts.router_prompts, opts.num_experts), layers, opts.hidden_router)
    out = {}
    for layer, matrix in rows.items():
        name = f"model.layers.{layer}.mlp.gate.weight"
        value = matrix.to(to_torch(dtypes[name])).contiguous()
        out[name] = Planned.of(Source(name, dtypes[name], tuple(value.shape), load=lambda v=value: v, origin="router (prompts' hidden states)"))
    return out


def native_tensors(ckpt: LlmCheckpoint) -> dict[str, Planned]:
    return text_table(ckpt.model_type, str(ckpt.path)).from_canonical(ckpt.tensors, where=str(ckpt.path))


def write_llm(ckpt: LlmCheckpoint, out: Path, *, shard_bytes: int, progress: Callable[[int], None] | None = None) -> None:
    from .common import copy_files, write_json

    write_json(out / "config.json", ckpt.config)
    write_weights(out, dict(sorted(native_tensors(ckpt).items())), max_shard_bytes=shard_bytes, progress=progress)
    copy_files(ckpt.tokenizer_files, out)
    copy_files(ckpt.extra_files, out)


def verify_llm(expected: LlmCheckpoint, out: Path) -> None:
    """Re-read ``out`` and check every tensor's bytes, dtype and shape against ``expected``."""
    written = read_weights(out)
    table = text_table(expected.model_type, str(out))
    got = table.to_canonical({n: Planned.of(s) for n, s in written.items()}, expected.config, where=str(out))
    if set(got) != set(expected.tensors):
        raise MmzooError(f"verification failed: tensors differ ({sorted(set(got) ^ set(expected.tensors))[:3]})", path=out)
    for name, planned in expected.tensors.items():
        if got[name].dtype != planned.dtype or tuple(got[name].shape) != tuple(planned.shape) or digest(got[name]) != digest(planned):
            raise MmzooError(f"verification failed: tensor {name!r} differs from the source", path=out)


def convert_llm(src: str | Path, out: str | Path, *, tgt_fmt: str, moe: dict[str, Any], dtype: str = "keep",
                shard_size: str | int = "5GB", overwrite: bool = False, verify: bool = False,
                progress: Callable[[int], None] | None = None, on_start: Callable[[Any], None] | None = None,
                experts_from: list[str | Path] | None = None):
    """``mmzoo convert`` for a plain LLM source with ``--moe-experts``: upcycle and write a causal-LM folder."""
    from ..io.atomic import atomic_write
    from .result import ConversionResult
    from ..io.confine import confine_checkpoint
    from ..io.dtypes import CLI_DTYPES, CONFIG_DTYPE_NAMES, is_float
    from ..upcycle.options import parse_options

    if tgt_fmt != "hf":
        raise UpcycleError(f"a plain LLM is upcycled into a transformers causal-LM folder: use --tgt-fmt hf (not {tgt_fmt}); "
                           "for a vision-language model assemble one first with `mmzoo init`", path=src)
    opts = parse_options(**moe)
    dense = read_llm(src)
    for path in experts_from or []:  # the same checks as the source: exists, no symlink leaves the folder
        if not Path(path).is_dir() or not (Path(path) / "config.json").is_file():
            raise UpcycleError("--moe-experts-from: not a model folder (no config.json)", path=path)
        confine_checkpoint(Path(path))
    others = [read_llm(path) for path in experts_from] if experts_from else None
    for ck in [dense, *(others or [])]:
        if dtype != "keep":
            target = CLI_DTYPES[dtype]
            ck.tensors = {n: (t.cast(target) if is_float(t.dtype) else t) for n, t in ck.tensors.items()}
            ck.config = {**ck.config, "dtype": CONFIG_DTYPE_NAMES[target]}
    moe_ckpt = upcycle_llm(dense, opts, others)
    if on_start is not None:
        on_start(moe_ckpt)
    atomic_write(Path(out), Path(src), overwrite,
                 lambda tmp: write_llm(moe_ckpt, tmp, shard_bytes=parse_size(shard_size), progress=progress))
    arch = moe_ckpt.config["architectures"][0]
    result = ConversionResult(Path(src), Path(out), f"{dense.model_type} LLM", f"hf ({arch})", len(moe_ckpt.tensors),
                              sum(t.nbytes for t in moe_ckpt.tensors.values()),
                              notes=[f"a {arch} folder: load it with AutoModelForCausalLM.from_pretrained(path)"])
    if verify:
        verify_llm(moe_ckpt, Path(out))
        result.verified = True
    return result
