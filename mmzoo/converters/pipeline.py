"""``convert``: read any format into canonical names, optionally cast, write any format atomically."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import registry as formats
from ..errors import MmzooError, naming, writing
from .common import validate
from .result import ConversionResult
from ..checkpoint.image_token import ensure_image_token
from ..io.checkpoint import parse_size
from ..io.atomic import atomic_write, check_output
from ..io.confine import confine_checkpoint, confine_checkpoint_files
from ..io.dtypes import CLI_DTYPES, CONFIG_DTYPE_NAMES, is_float
from ..io.tensors import digest
from ..checkpoint.spec import Checkpoint

DTYPES = ("keep", "bf16", "fp16", "fp32")


def read_checkpoint(path: str | Path, fmt: str | None = None, *, drop_unmatched: bool = False) -> Checkpoint:
    """Read a checkpoint of any format (auto-detected unless ``fmt``) into canonical names, lazily."""
    root = Path(path)
    if not root.exists():
        raise MmzooError("does not exist", path=root)
    confine_checkpoint(root)  # nothing is read through a symlink that leaves the folder
    name = fmt or formats.detect(root)
    module = formats.get(name)
    if fmt and not module.detect(root):
        from ..errors import UnknownFormat

        try:
            looks = f"it looks like {formats.detect(root)}; drop --src-fmt to auto-detect"
        except MmzooError as exc:  # nothing recognised: say what it is instead (a plain LLM: use mmzoo init)
            raise UnknownFormat(f"is not a {fmt} checkpoint: {exc}", path=root) from None
        raise UnknownFormat(f"is not a {fmt} checkpoint ({looks})", path=root)
    with naming(root):  # a config problem found while reading names the checkpoint it is in
        ckpt = module.read(root, drop_unmatched=drop_unmatched)
    confine_checkpoint_files(ckpt)
    validate(ckpt)
    return ckpt


def cast(ckpt: Checkpoint, dtype: str) -> Checkpoint:
    if dtype == "keep":
        return ckpt
    if dtype not in CLI_DTYPES:
        raise MmzooError(f"invalid --dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    target = CLI_DTYPES[dtype]
    ckpt.tensors = {n: (t.cast(target) if is_float(t.dtype) else t) for n, t in ckpt.tensors.items()}
    ckpt.spec = ckpt.spec.model_copy(update={"dtype": CONFIG_DTYPE_NAMES[target]})
    return ckpt


def input_folders(ckpt: Checkpoint) -> set[Path]:
    """The folders the tensors and files of ``ckpt`` are read from. A LLaVA-repo checkpoint reads its vision tower
    from the folder its config names, `mmzoo init` from two folders: `-o TOWER --overwrite` replaced that tower
    with the output while only the checkpoint's own folder was protected."""
    folders = {Path(ckpt.path)} if ckpt.path and Path(ckpt.path).exists() else set()
    for planned in ckpt.tensors.values():
        for piece in planned.pieces:
            file = piece.source.file
            if file and Path(file).is_file():
                folders.add(Path(file).parent)
    for files in (ckpt.tokenizer_files, ckpt.extra_files):
        folders.update(Path(path).parent for path in files.values())
    return folders


def write_checkpoint(ckpt: Checkpoint, out: str | Path, tgt_fmt: str, *, overwrite: bool = False, shard_size: str | int = "5GB",
                     progress: Callable[[int], None] | None = None, llava_vision_tower: str | None = None) -> None:
    writer = formats.get(tgt_fmt)
    if ckpt.spec.multiscale and not getattr(writer, "MULTISCALE", False):
        from ..errors import UnknownArchitecture

        raise UnknownArchitecture(f"the {tgt_fmt} layout cannot express S² multi-scale image features (vision_scales "
                                  f"{ckpt.spec.vision_scales}: the tower also runs on upscaled crops and the projector reads "
                                  f"{len(ckpt.spec.vision_scales)}x its width); write internal or libmoe")
    shard_bytes = parse_size(shard_size)
    out = Path(out)
    source = ckpt.path if ckpt.path and Path(ckpt.path).exists() else None
    for folder in input_folders(ckpt):  # every folder a byte is read from, not only the checkpoint's own
        check_output(out, folder, overwrite)
    with writing(out):  # "No space left on device" from a byte-range copy names the output
        atomic_write(out, source, overwrite, lambda tmp: writer.write(
            ckpt, tmp, final_path=out.absolute(), shard_bytes=shard_bytes, progress=progress, vision_tower=llava_vision_tower))


def convert(
    src: str | Path,
    out: str | Path,
    *,
    tgt_fmt: str,
    src_fmt: str | None = None,
    dtype: str = "keep",
    shard_size: str | int = "5GB",
    overwrite: bool = False,
    verify: bool = False,
    drop_unmatched_keys: bool = False,
    llava_vision_tower: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[Checkpoint], None] | None = None,
    moe: dict[str, Any] | None = None,
    moe_experts_from: list[str | Path] | None = None,
    add_image_token: bool = False,
) -> ConversionResult:
    """Convert ``src`` to ``tgt_fmt`` at ``out``. Bit-exact unless ``dtype`` asks otherwise.
    With ``moe``, a plain causal LM (Llama, Mistral, Qwen2, Phi-3) becomes a Mixtral / Qwen2-MoE LLM
    folder, and ``moe_experts_from`` builds its experts from several fine-tuned LLMs (mmzoo.converters.llm).
    ``add_image_token``: give a source without an ``<image>`` token one (the hf target always does)."""
    formats.get(tgt_fmt)  # fail on an unknown target before reading anything
    if dtype not in DTYPES:
        raise MmzooError(f"invalid --dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if moe is not None:
        from .llm import convert_llm, is_plain_llm

        if Path(src).exists():
            confine_checkpoint(Path(src))
        if is_plain_llm(src):
            return convert_llm(src, out, tgt_fmt=tgt_fmt, moe=moe, dtype=dtype, shard_size=shard_size, overwrite=overwrite,
                               verify=verify, progress=progress, on_start=on_start, experts_from=moe_experts_from)
    if moe_experts_from:
        raise MmzooError("--moe-experts-from needs --moe-experts and a plain LLM source (Llama, Mistral, Qwen2, Phi-3)")
    ckpt = cast(read_checkpoint(src, src_fmt, drop_unmatched=drop_unmatched_keys), dtype)
    if moe is not None:
        from ..upcycle import upcycle  # dense -> MoE while converting (see mmzoo/upcycle)

        ckpt = upcycle(ckpt, **moe)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mmzoo-tokenizer-") as scratch:
        if tgt_fmt == "hf" or add_image_token:  # transformers' Llava needs an image token; LLaVA-repo checkpoints have none
            note = ensure_image_token(ckpt, Path(scratch))
            notes += [note] if note else []
        if on_start is not None:
            on_start(ckpt)
        write_checkpoint(ckpt, out, tgt_fmt, overwrite=overwrite, shard_size=shard_size, progress=progress, llava_vision_tower=llava_vision_tower)
    notes += getattr(formats.get(tgt_fmt), "target_notes", lambda _: [])(ckpt)  # a target format's caveats, if it has any
    result = ConversionResult(Path(src), Path(out), ckpt.format, tgt_fmt, len(ckpt.tensors), sum(t.nbytes for t in ckpt.tensors.values()), notes=notes)
    if ckpt.spec.moe:
        from .moe_llava import conversion_notes as moe_llava_notes
        from ..upcycle import conversion_notes

        result.notes.extend(moe_llava_notes(ckpt, tgt_fmt) + conversion_notes(ckpt, tgt_fmt, upcycled=moe is not None))
    if tgt_fmt == "hf":
        from .hf import transformers4_notes

        result.notes.extend(transformers4_notes(ckpt.spec))
    if verify:
        verify_against(ckpt, Path(out), tgt_fmt)
        result.verified = True
    return result


def verify_against(expected: Checkpoint, out: Path, fmt: str) -> None:
    """Re-read ``out`` and check every tensor's bytes, dtype and shape against ``expected``."""
    written = read_checkpoint(out, fmt)
    # tensors a layout cannot hold and leaves out on purpose, with a note (libmoe: SigLIP's unused head)
    left_out = set(getattr(formats.get(fmt), "left_out", lambda _: ())(expected))
    expected = replace(expected, tensors={n: t for n, t in expected.tensors.items() if n not in left_out})
    written = replace(written, tensors={n: t for n, t in written.tensors.items() if n not in left_out})
    missing = sorted(set(expected.tensors) - set(written.tensors))
    extra = sorted(set(written.tensors) - set(expected.tensors))
    if missing or extra:
        raise MmzooError(f"verification failed: missing {missing[:3]} extra {extra[:3]}", path=out)
    for name, planned in expected.tensors.items():
        got = written.tensors[name]
        if got.dtype != planned.dtype or got.shape != planned.shape or digest(got) != digest(planned):
            raise MmzooError(f"verification failed: tensor {name!r} differs from the source", path=out)
