"""The training config (``mmzoo train --params x.yaml``): a strict pydantic model plus ``--set`` overrides.

Every section forbids unknown keys; a bad value or key becomes one :class:`ConfigError` line naming the
key and the allowed values. Paths are taken as written (relative paths are relative to the working
directory, like the seeds' shell scripts).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..io.structured import load_yaml, safe_yaml

STAGES = ("pretrain", "sft", "moe", "distill", "preference")
PRECISIONS = ("bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Strict):
    path: Path  # output of `mmzoo preprocess` (manifest.json + shards)
    images: Path  # image root the preprocessed samples' image paths are relative to
    num_workers: int = 2  # processes reading and collating micro batches ahead of the step (0: in process)
    verify_shards: bool = True  # compare the shards with the manifest's sha256 before step 0 (mmzoo/preprocess/integrity.py)
    # seconds the training step may wait for the workers' next micro batch before the run stops with one error
    # line (a worker stuck or starved) instead of hanging; 0: wait forever (why 600: docs/train.md, "Data workers
    # and hangs")
    worker_timeout: float = 600.0

    @field_validator("num_workers", "worker_timeout")
    @classmethod
    def _not_negative(cls, value):
        if value < 0:
            raise ValueError("must be >= 0")
        return value


class TrainSection(_Strict):
    max_steps: int | None = None
    epochs: float | None = None
    micro_batch_size: int = 4
    global_batch_size: int = 128
    lr: float | None = None  # None: the stage default (pretrain 1e-3, sft/moe 2e-5)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    freeze: list[str] | None = None  # None: the stage default
    train_only: list[str] = []
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int | None = None  # keep only the newest N step checkpoints (None: keep all)
    # write checkpoints in a background thread from a host snapshot (mmzoo/train/saving.py); auto: on a GPU
    async_checkpoint: bool | Literal["auto"] = "auto"
    log_every: int = 1
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    packing: bool = False  # padding-free micro batches of up to max_tokens tokens (mmzoo/train/packing.py)
    max_tokens: int | None = None  # tokens per packed micro batch (packing only)
    cross_entropy: Literal["plain", "chunked", "liger"] = "plain"  # chunked/liger: no full logits tensor
    liger_kernels: bool = False  # Liger's Triton RMSNorm, SwiGLU and RoPE (CUDA, Llama/Mistral/Qwen2 LLMs)
    compile: bool | Literal["inductor", "aot_eager", "cudagraphs"] = False  # torch.compile (true: inductor)
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []  # experiment trackers (mmzoo/train/tracking.py)
    plot: bool = False  # write OUTPUT_DIR/metrics.png (mmzoo plot) when the run ends
    routing_plots: bool = False  # MoE: write OUTPUT_DIR/routing/ (routing.json + PNGs, as analyze-routing) at the end

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        from .tracking import check_installed

        check_installed(value)  # here, so `mmzoo train` says it before launching any process
        return list(dict.fromkeys(value))

    @field_validator("micro_batch_size", "global_batch_size", "save_every", "log_every", "max_tokens", "max_steps")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:  # max_tokens / max_steps may be unset (None)
        if value is not None and value < 1:
            raise ValueError("must be >= 1")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("warmup_ratio", "min_lr_ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError("must be between 0 and 1")
        return value

    @field_validator("lr")
    @classmethod
    def _lr(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("freeze", "train_only")
    @classmethod
    def _regexes(cls, value: list[str] | None) -> list[str] | None:
        import re

        for pattern in value or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regex ({exc})") from None
        return value

    @model_validator(mode="after")
    def _length(self) -> "TrainSection":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps or epochs")
        if self.attn_implementation == "flash_attention_2" and self.precision == "fp32":
            # flash-attn kernels exist for half precision only; transformers would fail at the first forward
            raise ValueError("attn_implementation flash_attention_2 needs precision bf16 or fp16 (or use sdpa with fp32)")
        if self.packing and self.max_tokens is None:
            raise ValueError("packing needs max_tokens (the tokens of one packed micro batch)")
        if self.max_tokens is not None and not self.packing:
            raise ValueError("max_tokens applies to packed micro batches only: set packing: true too")
        return self


class DeepSpeedSection(_Strict):
    zero_stage: Literal[0, 1, 2, 3] | None = None  # None: 0 on one process, else 2 (mmzoo/train/ds_config.py)
    offload_optimizer: bool = False
    offload_param: bool = False  # ZeRO-3 only
    overrides: dict[str, Any] = {}  # merged last into the generated DeepSpeed config (expert use)


class MoeSection(_Strict):
    router_aux_loss_coef: float | None = None  # None: the checkpoint's layout (set at upcycling), else 0.01
    vision_aux_loss_coef: float | None = None  # image tokens' coefficient (MoIIE); None: same as text
    capacity_factor: float | None = None  # None: the checkpoint's layout (None there = dropless)
    router_z_loss_coef: float | None = None  # LibMoE routers' z-loss weight; None: the checkpoint's layout

    @field_validator("router_aux_loss_coef", "vision_aux_loss_coef", "router_z_loss_coef")
    @classmethod
    def _coef(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("must be >= 0")
        return value


class DistillSection(_Strict):
    """LLaVA-MoD's mimic distillation (``stage: distill``; the loss is in mmzoo/train/distill.py)."""
    loss: Literal["only_kd", "kd_lm"] = "kd_lm"  # only_kd: KD alone; kd_lm: KD + the language-model loss
    kd_coef: float = 1.0  # weight of the KD term
    temperature: float = 1.0  # softens both distributions; the KD term is scaled by T² (1: LLaVA-MoD)
    all_tokens: bool = False  # false: response positions only; true: instruction + response (DISTILL_ALL_TOKENS)

    @field_validator("kd_coef")
    @classmethod
    def _coef(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be > 0")
        return value


class PreferenceSection(_Strict):
    """LLaVA-MoD's preference distillation (``stage: preference``; the loss is in mmzoo/train/preference.py)."""
    loss: Literal["sigmoid", "kto_pair"] = "sigmoid"  # DPO (sigmoid) or KTO on pairs (LOSS_TYPE)
    beta: float = 0.1  # how far the policy may move from the reference (LLaVA-MoD / TRL default 0.1)
    label_smoothing: float = 0.0  # cDPO: the share of pairs assumed mislabelled (sigmoid only)
    precompute_reference: bool = False  # reference log-probs once over the data before training (cached in the run)

    @field_validator("beta")
    @classmethod
    def _beta(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing(cls, value: float) -> float:
        if not 0.0 <= value < 0.5:
            raise ValueError("must be in [0, 0.5)")
        return value

    @model_validator(mode="after")
    def _smoothing_loss(self) -> "PreferenceSection":
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError("label_smoothing applies to loss sigmoid only (kto_pair has none)")
        return self


class TrainConfig(_Strict):
    stage: Literal["pretrain", "sft", "moe", "distill", "preference"]
    model: Path
    teacher: Path | None = None  # stage distill: the frozen teacher, any checkpoint mmzoo reads
    distill: DistillSection = DistillSection()
    reference: Path | None = None  # stage preference: the frozen reference model (None: the policy's starting weights)
    preference: PreferenceSection = PreferenceSection()
    data: DataSection
    train: TrainSection = TrainSection(max_steps=1000)
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    moe: MoeSection = MoeSection()
    output_dir: Path

    @model_validator(mode="after")
    def _teacher(self) -> "TrainConfig":
        if self.stage == "distill" and self.teacher is None:
            raise ValueError("stage distill needs teacher: (the checkpoint the student learns from)")
        if self.stage != "distill" and self.teacher is not None:
            raise ValueError(f"teacher: is used by stage distill only (this stage is {self.stage})")
        if self.stage == "distill" and self.train.cross_entropy != "plain":
            # chunked / liger never build the student's logits, which the KD loss compares with the teacher's
            raise ValueError("stage distill needs train.cross_entropy plain (the KD loss reads the full logits)")
        if self.stage == "distill" and self.train.packing:
            raise ValueError("stage distill does not support train.packing yet (use padded batches)")
        if self.stage != "preference" and self.reference is not None:
            raise ValueError(f"reference: is used by stage preference only (this stage is {self.stage})")
        if self.stage == "preference" and self.train.cross_entropy != "plain":
            raise ValueError("stage preference needs train.cross_entropy plain (the log-probs read the full logits)")
        if self.stage == "preference" and self.train.packing:
            raise ValueError("stage preference does not support train.packing (a pair is two padded sequences)")
        return self

    @property
    def reference_model(self) -> Path:
        """The preference stage's reference: ``reference:``, else the policy's starting weights."""
        return self.reference if self.reference is not None else self.model

    @property
    def lr(self) -> float:
        from .stages import STAGE_DEFAULTS

        return self.train.lr if self.train.lr is not None else STAGE_DEFAULTS[self.stage].lr

    def dump(self) -> dict[str, Any]:
        """A plain dict (paths as strings) that validates back into the same config."""
        return self.model_dump(mode="json")


def gradient_accumulation(cfg: TrainConfig, world_size: int) -> int:
    per_step = cfg.train.micro_batch_size * world_size
    if cfg.train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size {cfg.train.global_batch_size} is not a multiple of micro_batch_size × processes "
            f"({cfg.train.micro_batch_size} × {world_size} = {per_step})"
        )
    return cfg.train.global_batch_size // per_step


def total_steps(cfg: TrainConfig, dataset_size: int, *, plan=None, accumulation: int = 1, world: int = 1) -> int:
    """``train.max_steps``, or the steps of ``train.epochs`` (packed: the packs that cover them, ``plan``)."""
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    if plan is not None:
        packs = plan.packs_for_positions(math.ceil(cfg.train.epochs * dataset_size))
        return max(1, math.ceil(packs / (accumulation * world)))
    return max(1, math.ceil(cfg.train.epochs * dataset_size / cfg.train.global_batch_size))


# -- loading, overrides, one-line errors -----------------------------------------------------------
def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=1e-4", "deepspeed.zero_stage=3"]`` -> nested dict (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"invalid --set {item!r} (expected key.sub=value, e.g. train.lr=1e-4)")
        try:  # bounded like the params file: `--set deepspeed.overrides=...` is YAML too
            value = safe_yaml(raw, where=f"--set {key}") if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r} conflicts with another --set for {part!r}")
            node = child
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *, data: dict[str, Any] | None = None) -> TrainConfig:
    """Read a yaml file (or ``data``), apply ``--set`` overrides, validate (one-line ConfigError on failure)."""
    where = str(path) if path is not None else "params"
    raw: Any = dict(data or {})
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError("params file not found", path=p)
        raw = load_yaml(p) or {}  # a regular UTF-8 file, bounded in size, depth and alias expansion
    if not isinstance(raw, dict):
        raise ConfigError("the params file must be a YAML mapping", path=where)
    raw = merge(raw, parse_overrides(overrides))
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        loc = ".".join(str(part) for part in exc.errors()[0].get("loc", ()))
        overridden = [item for item in overrides or [] if loc and item.partition("=")[0].strip() in
                      (loc, *(loc.rsplit(".", n)[0] for n in range(1, loc.count(".") + 1)))]
        # a bad value given on the command line is the user's --set, not a line of the file
        raise ConfigError(describe_error(exc), path=f"--set {overridden[-1]}" if overridden else where) from None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = TrainConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model


def describe_error(exc: ValidationError) -> str:
    """One line: the key, what is wrong, and what is allowed."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(p for p in first.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "params"
    kind = first.get("type", "")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent is not None else "?"
        return f"unknown key {key!r} (allowed in {'.'.join(map(str, loc[:-1])) or 'the top level'}: {allowed}){more}"
    if kind == "missing":
        return f"missing key {key!r}{more}"
    if kind == "model_type":  # a section given as a scalar: pydantic would name its class ("instance of DataSection")
        parent = _model_at(loc)
        keys = f" ({', '.join(parent.model_fields)})" if parent is not None else ""
        return f"invalid {key}: expected a section of keys{keys}, got {first.get('input')!r}{more}"
    if kind == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        return f"invalid {key}: {first.get('input')!r} (allowed: {expected.replace(' or ', ', ')}){more}"
    msg = first.get("msg", "invalid")
    msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
    shown = first.get("input")
    got = "" if isinstance(shown, dict) else f" (got {shown!r})"
    return f"invalid {key}: {msg}{got}{more}"
