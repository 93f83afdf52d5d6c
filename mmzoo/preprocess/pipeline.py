"""``preprocess()``: read rows in order, encode them in worker processes, write shards in order.

Results come back in input order (bounded window of chunks in flight), so the shards, manifest and
rejection list are the same whatever ``workers`` is. After each finished shard a checkpoint records how
many input rows it covers, the statistics so far and the size of rejected.jsonl: ``resume`` restarts
from there and produces exactly what an uninterrupted run would have.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError, MmzooError, OutputExists, writing
from ..forking import frozen_for_fork
from ..io.claim import exclusive_output, refuse_overlap
from ..io.parents import parents_removed_on_failure
from .encode import IMAGE_PLACEMENTS, REASONS, Encoder, Rejection, Sample, Settings, TokenizerInfo
from .workers import encode_chunk, init_worker, make_encoder, share_with_forked_workers, unpack
from ..io.structured import load_json
from .sources import check_sources, chunked, iter_rows
from .templates import TEMPLATES, make_renderer
from .writer import FORMAT_VERSION, TMP_SUFFIX, MmzooWriter

FORMATS = ("mmzoo", "cerebras", "cerebras-multimodal")
CHECKPOINT = {"mmzoo": ".progress.json", "cerebras": "checkpoint.txt", "cerebras-multimodal": "checkpoint.txt"}
CHUNK_ROWS = 512  # rows per task: large enough to amortise IPC, small enough to keep workers busy
MAX_IMAGE_TOKENS = 1 << 20  # per image; far above any real tower (LLaVA-1.5: 576)


def new_stats() -> dict[str, Any]:
    return {"samples_read": 0, "samples_written": 0, "rejected": {}, "truncated": 0,
            "tokens": 0, "loss_tokens": 0, "images": 0}


def preprocess(
    data: list[str | Path] | str | Path,
    images: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    *,
    template: str = "auto",
    max_seq_len: int = 2048,
    num_image_tokens: int | None = None,
    model: str | Path | None = None,
    truncate: bool = False,
    workers: int = 1,
    samples_per_shard: int = 10000,
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
    format: str = "mmzoo",
    check_images: bool = True,
    image_placement: str = "llava",
    kind: str = "conversation",
    console: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Tokenize LLaVA conversations (``kind`` preference: chosen/rejected pairs, mmzoo/preprocess/preference.py)
    into H5 shards under ``out``; returns the manifest (a dict)."""
    paths = [Path(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
    _check_options(template, format, max_seq_len, workers, samples_per_shard, resume, overwrite, num_image_tokens, model)
    _check_kind(kind, format, truncate)
    if image_placement not in IMAGE_PLACEMENTS:
        raise ConfigError(f"unknown image placement {image_placement!r}", hint="llava or keep")
    if format == "cerebras" and image_placement != "llava":  # its LlavaModel pastes the image at one fixed position
        raise ConfigError("--format cerebras needs --image-placement llava (Cerebras' LlavaModel pastes the image at the start "
                          "of the first user turn)", hint="use --format cerebras-multimodal to keep the markers where they are")
    check_sources(paths)
    image_root = Path(images)
    if not image_root.is_dir():
        raise MmzooError("image folder not found", path=image_root)
    n_img = _resolve_num_image_tokens(num_image_tokens, model, tokenizer)
    info = TokenizerInfo.load(tokenizer)
    make_renderer(template, info.bos, info.eos, info.chat_template)  # fail early on a bad/missing template
    params = {
        "data": [str(p) for p in paths], "images": str(image_root), "tokenizer": str(tokenizer), "template": template,
        "max_seq_len": max_seq_len, "num_image_tokens": n_img, "truncate": truncate, "format": format,
        "samples_per_shard": samples_per_shard, "image_token_id": info.image_token_id, "pad_token_id": info.pad_id,
        "check_images": check_images, "image_placement": image_placement,
    }
    if kind != "conversation":  # only then: the parameters (and so --resume) of conversation data stay as they were
        params["kind"] = kind
    settings = Settings(str(tokenizer), str(image_root), template, max_seq_len, n_img, truncate, check_images,
                        image_placement, kind)
    target = Path(out)
    # --overwrite replaces OUT and --resume deletes unfinished files in it: neither may touch an input.
    inputs = [("data file", p) for p in paths] + [("image folder", image_root), ("tokenizer", Path(tokenizer))]
    refuse_overlap(target, inputs + ([("model", Path(model))] if model is not None else []))
    # A run that fails before writing anything leaves no empty folders it made for OUT (kept shards stay).
    with parents_removed_on_failure(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_output(target):  # one preprocess (or convert) writes OUT at a time
            return _write(target, paths, params, settings, info, format, strict, resume, overwrite, workers,
                          console if progress else None)


def _write(target: Path, paths: list[Path], params: dict, settings: Settings, info: TokenizerInfo, format: str,
           strict: bool, resume: bool, overwrite: bool, workers: int, console: Any) -> dict[str, Any]:
    fresh = not (target.exists() and any(target.iterdir())) or overwrite
    work, state = _prepare_output(target, params, format, resume, overwrite)
    if state.get("complete"):
        return state["manifest"]
    try:
        run = _Run(work, paths, params, settings, info, format, strict, state)  # a layout may refuse the settings
        with writing(work):  # a full disk names the output folder (finished shards stay for --resume)
            if not state:  # mark the folder as mmzoo's from the start: only such a folder accepts --resume
                run._checkpoint(0)
            run.execute(workers, console)
            manifest = run.finish()
    except MmzooError:
        # A run that fails on bad input (e.g. --strict) leaves nothing behind it started from scratch;
        # an interrupted run (Ctrl-C, kill) keeps its finished shards for --resume.
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if work != target:  # --overwrite: swap in the complete new output only now
        _swap(work, target)
    return manifest


def _check_options(template: str, format: str, max_seq_len: int, workers: int, per_shard: int, resume: bool,
                   overwrite: bool, num_image_tokens: int | None, model: Any) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}", hint="choose one of " + ", ".join(TEMPLATES))
    if format == "cerebras-llava":  # its name before it became what --format cerebras means
        raise ConfigError("--format cerebras-llava is now --format cerebras (Cerebras' LlavaModel layout)",
                          hint="the generic multi-image layout is --format cerebras-multimodal")
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}", hint="mmzoo, cerebras or cerebras-multimodal")
    if max_seq_len < 8 or workers < 1 or per_shard < 1:
        raise ConfigError("--max-seq-len must be >= 8, --workers and --samples-per-shard >= 1")
    # Upper bounds far above real use: the cerebras layout allocates max_seq_len per sample and a
    # shard is built in memory, so an absurd value would exhaust memory instead of failing.
    for flag, value, limit in (("--max-seq-len", max_seq_len, 1 << 24), ("--samples-per-shard", per_shard, 10_000_000),
                               ("--workers", workers, 1024), ("--num-image-tokens", num_image_tokens or 1, MAX_IMAGE_TOKENS)):
        if value > limit:
            raise ConfigError(f"{flag} {value:,} is more than {limit:,}")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if num_image_tokens is not None and model is not None:
        raise ConfigError("give --num-image-tokens or --model, not both")
    if num_image_tokens is not None and num_image_tokens < 1:
        raise ConfigError("--num-image-tokens must be >= 1")


def _check_kind(kind: str, format: str, truncate: bool) -> None:
    from .preference import KINDS

    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}", hint="conversation or preference")
    if kind == "preference" and format != "mmzoo":
        raise ConfigError(f"--kind preference writes --format mmzoo only (not {format})")
    if kind == "preference" and truncate:
        raise ConfigError("--kind preference never truncates (a cut could drop the answers compared): use --skip-long")


def _resolve_num_image_tokens(n: int | None, model: str | Path | None, tokenizer: str | Path) -> int:
    from ..checkpoint.locate import num_image_tokens

    if n is not None:
        return n
    source = model if model is not None else tokenizer
    if not Path(source).exists():  # a mistyped --tokenizer / --model is that, not "image tokens unknown"
        raise MmzooError("does not exist", path=source)
    try:
        derived = int(num_image_tokens(source))
    except (MmzooError, KeyError, TypeError) as exc:
        if model is not None:
            raise MmzooError(f"cannot read the vision config ({exc})", path=model) from None
        raise MmzooError("the number of image tokens is unknown", hint="give --num-image-tokens N or --model CHECKPOINT") from None
    # the bound --num-image-tokens has: image_size 2^20 over patch_size 1 (each within its own bound) is 2^40 tokens
    # per image, and every image sample allocated that many before its length was judged
    if derived > MAX_IMAGE_TOKENS:
        raise ConfigError(f"its vision config implies {derived:,} tokens per image ((image_size / patch_size)²), more "
                          f"than the {MAX_IMAGE_TOKENS:,} a model can have", path=source)
    return derived


# -- output folder, checkpoint, resume ---------------------------------------------------------
def _prepare_output(target: Path, params: dict, format: str, resume: bool, overwrite: bool) -> tuple[Path, dict]:
    exists = target.exists() and (not target.is_dir() or any(target.iterdir()))
    if target.exists() and not target.is_dir():
        raise OutputExists("exists and is not a folder", path=target)
    if exists and overwrite:
        work = target.parent / f".{target.name}.mmzoo-partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return work, {}
    if exists and not resume:
        raise OutputExists("output folder exists and is not empty", path=target, hint="use --resume or --overwrite")
    target.mkdir(parents=True, exist_ok=True)
    if not exists:
        return target, {}
    manifest_path = target / ("data_params.json" if format.startswith("cerebras") else "manifest.json")
    if manifest_path.is_file():
        manifest = _read_state(manifest_path)
        _same_params(manifest.get("parameters", {}), params, target)
        return target, {"complete": True, "manifest": manifest}
    checkpoint = target / CHECKPOINT[format]
    if not checkpoint.is_file():  # resuming deletes unfinished files: only in a folder mmzoo says it wrote
        raise MmzooError(f"not an unfinished mmzoo preprocess output (no {CHECKPOINT[format]} or "
                         f"{manifest_path.name}): refusing to --resume into it, since resuming deletes the unfinished "
                         "files it finds", path=target, hint="choose an empty or new folder for -o")
    state: dict = {}
    if checkpoint.is_file():
        state = _read_state(checkpoint)
        _same_params(state.get("parameters", {}), params, target)
    keep = {s["file"] for s in state.get("shards", [])}
    for path in target.iterdir():  # partial files and shards written after the last checkpoint are redone
        if path.name.endswith(TMP_SUFFIX) or (path.suffix == ".h5" and path.name not in keep):
            path.unlink()
    return target, state


def _read_state(path: Path) -> dict:
    """A manifest or progress file of an earlier run, checked field by field: a corrupt one (a crash
    mid-write on a filesystem without atomic rename, a hand edit) is one clear error, not a traceback."""
    problem = "corrupt (use --overwrite to start again)"
    try:
        state = load_json(path)
    except MmzooError as exc:
        raise ConfigError(f"{problem}: {exc}", path=path) from None
    if not isinstance(state, dict) or not isinstance(state.get("parameters", {}), dict):
        raise ConfigError(problem, path=path)
    shards = state.get("shards", [])
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str) for s in shards):
        raise ConfigError(f"{problem}: 'shards' is not a list of files", path=path)
    for key in ("rows_consumed", "rejected_bytes"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{problem}: {key!r} is not a count", path=path)
    stats = state.get("statistics")
    if stats is not None and (not isinstance(stats, dict) or set(new_stats()) - set(stats) or not isinstance(stats["rejected"], dict)):
        raise ConfigError(f"{problem}: 'statistics' lacks fields", path=path)
    return state


def _same_params(old: dict, new: dict, target: Path) -> None:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise MmzooError(f"cannot resume: parameters differ from the interrupted run ({', '.join(changed)})", path=target,
                         hint="use --overwrite to start again")


def _swap(work: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.mmzoo-old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(work, target)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _Run:
    def __init__(self, out: Path, paths: list[Path], params: dict, settings: Settings, info: TokenizerInfo,
                 format: str, strict: bool, state: dict):
        self.out, self.paths, self.params, self.settings, self.format, self.strict = out, paths, params, settings, format, strict
        self.info = info
        self.stats: dict[str, Any] = state.get("statistics") or new_stats()
        self.rows_done: int = state.get("rows_consumed", 0)
        rejected = out / "rejected.jsonl"
        with rejected.open("ab") as handle:  # drop rejections recorded after the last checkpoint
            handle.truncate(state.get("rejected_bytes", 0))
        self.rejected = rejected.open("a", encoding="utf-8")
        shards = state.get("shards", [])
        if format == "cerebras":
            from .cerebras import CerebrasLlavaWriter, image_start

            self.writer: Any = CerebrasLlavaWriter(out, params["max_seq_len"], params["num_image_tokens"], info.image_token_id,
                                                   info.pad_id, image_start(Encoder(settings, info)), shards)
        elif format == "cerebras-multimodal":
            from .cerebras import CerebrasMultimodalWriter

            self.writer = CerebrasMultimodalWriter(out, params["max_seq_len"], params["num_image_tokens"], info.image_token_id,
                                                   info.pad_id, shards)
        else:
            attrs = {"image_token_id": info.image_token_id, "num_image_tokens": params["num_image_tokens"],
                     "max_seq_len": params["max_seq_len"], "template": params["template"], "tokenizer": params["tokenizer"]}
            per_shard = params["samples_per_shard"]
            if params.get("kind") == "preference":  # a pair is two consecutive samples: shards hold whole pairs
                attrs["kind"], per_shard = "preference", 2 * per_shard
            self.writer = MmzooWriter(out, per_shard, attrs, shards)

    # -- encoding, in order ------------------------------------------------------------------------
    def _pool(self, workers: int) -> Any:
        if workers == 1:
            return None
        import multiprocessing

        # fork (where it exists): no re-import of __main__, so it works from scripts, notebooks and stdin.
        # The pool is created before the progress thread starts, and workers only run tokenizers
        # sequentially (its fork guard disables rayon in children), so no inherited lock can bite.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        if ctx.get_start_method() == "fork":  # forked workers inherit the loaded tokenizer instead of each loading it again
            share_with_forked_workers(make_encoder(self.settings, self.info))
        # SIGTERM stays blocked while the workers are forked, and every worker unblocks it only after it has
        # reset the handler it inherited (init_worker). Otherwise a Pool.terminate() that reaches a worker
        # still starting up can be lost: CPython drops a signal whose Python handler became SIG_DFL before
        # the handler ran, and that worker then waits on the task queue forever, and the parent's join with it.
        # The pool's own threads, started here, keep it blocked, so the main thread still receives it.
        masked = hasattr(signal, "pthread_sigmask")
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if masked else None
        try:
            with frozen_for_fork():  # see mmzoo/forking.py: e.g. from a process that trained before (tests, notebooks)
                return ctx.Pool(workers, initializer=init_worker, initargs=(self.settings,))
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            share_with_forked_workers(None)

    def _results(self, pool: Any, workers: int) -> Iterator[list[Sample | Rejection]]:
        rows = iter_rows(self.paths, skip=self.rows_done)
        if hasattr(self.writer, "prepare"):  # a layout that looks at rows before encoding (cerebras)
            rows = map(self.writer.prepare, rows)
        chunks = chunked(rows, CHUNK_ROWS)
        if pool is None:
            encoder = make_encoder(self.settings, self.info)
            yield from map(encoder.encode_rows, chunks)
            return
        window: deque = deque()
        for chunk in chunks:
            window.append(pool.apply_async(encode_chunk, (chunk,)))
            if len(window) >= 4 * workers:  # bounded: memory stays flat on huge inputs
                yield unpack(window.popleft().get())
        while window:
            yield unpack(window.popleft().get())

    def execute(self, workers: int, console: Any) -> None:
        pool = self._pool(workers)
        bar = _Progress(console, self.stats["samples_read"])
        try:
            for results in self._results(pool, workers):
                for result in results:
                    self._take(result)
                bar.update(self.stats["samples_read"], self.stats["samples_written"])
        finally:
            bar.stop()
            if pool is not None:
                pool.terminate()
                pool.join()
        self.writer.close()

    def _take(self, result: Sample | Rejection) -> None:
        if hasattr(self.writer, "admit"):  # what the layout cannot hold becomes a rejection
            result = self.writer.admit(result)
        stats = self.stats
        stats["samples_read"] += 1
        if isinstance(result, Rejection):
            self._reject(result)
            return
        stats["samples_written"] += 1  # a preference pair counts once, its two sides' tokens both
        sides = (result.chosen, result.rejected) if hasattr(result, "chosen") else (result,)
        stats["images"] += len(sides[0].images)  # both sides show the same images
        done = False
        for side in sides:
            stats["tokens"] += len(side.input_ids)
            stats["loss_tokens"] += int(np.count_nonzero(side.loss_mask))  # a mask is 0/1; sum() would upcast first
            stats["truncated"] += int(side.truncated)
            done = self.writer.add(side)  # a shard holds whole pairs, so it can only end after a pair's last side
        if done:
            self._checkpoint(result.row + 1)

    def _reject(self, rej: Rejection) -> None:
        source = self.paths[rej.source]
        where = "line" if source.suffix.lower() == ".jsonl" else "index"
        if self.strict:
            raise MmzooError(f"{source}:{rej.position}: sample {rej.sample_id or '?'} rejected: {rej.reason} ({rej.detail}) [--strict]")
        counts = self.stats["rejected"]
        counts[rej.reason] = counts.get(rej.reason, 0) + 1
        record = {"source": str(source), where: rej.position, "id": rej.sample_id, "reason": rej.reason, "detail": rej.detail}
        self.rejected.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _checkpoint(self, rows_consumed: int) -> None:
        self.rejected.flush()
        _write_json(self.out / CHECKPOINT[self.format], {
            "parameters": self.params, "rows_consumed": rows_consumed, "statistics": self.stats,
            "rejected_bytes": self.rejected.tell(), "shards": self.writer.shards,
        })

    def finish(self) -> dict[str, Any]:
        self.rejected.close()
        stats = dict(self.stats, rejected=dict(sorted(self.stats["rejected"].items(), key=lambda kv: REASONS.index(kv[0]))))
        manifest = {"format": self.format, "format_version": FORMAT_VERSION, "shards": self.writer.shards,
                    "parameters": self.params, "statistics": stats}
        if self.info.notes:
            manifest["notes"] = list(self.info.notes)
        if self.format.startswith("cerebras"):
            manifest["max_num_img"] = self.writer.max_num_img
            if hasattr(self.writer, "image_start_idx"):
                manifest["image_start_idx"] = self.writer.image_start_idx
            _write_json(self.out / "data_params.json", manifest)
            self._checkpoint_complete()
        else:
            _write_json(self.out / "manifest.json", manifest)
            (self.out / CHECKPOINT["mmzoo"]).unlink(missing_ok=True)
        return manifest

    def _checkpoint_complete(self) -> None:
        (self.out / CHECKPOINT["cerebras"]).unlink(missing_ok=True)


class _Progress:
    """A rich progress line with samples/s; silent when no console is given."""

    def __init__(self, console: Any, start: int):
        self.progress = None
        if console is None:
            return
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]preprocess[/]"), BarColumn(bar_width=None),
            TextColumn("{task.completed:,} samples ({task.fields[written]:,} kept)"),
            TextColumn("[cyan]{task.fields[rate]:,.0f} samples/s"), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self.task = self.progress.add_task("preprocess", total=None, completed=start, written=0, rate=0.0)
        self.start, self.first, self.t0 = start, start, time.perf_counter()
        self.progress.start()

    def update(self, read: int, written: int) -> None:
        if self.progress is not None:
            rate = (read - self.first) / max(time.perf_counter() - self.t0, 1e-9)
            self.progress.update(self.task, completed=read, written=written, rate=rate)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
