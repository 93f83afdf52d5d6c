"""safetensors dtype names, their sizes, and the torch dtypes they correspond to (resolved lazily)."""
from __future__ import annotations

ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}

# --dtype choices -> safetensors dtype names
CLI_DTYPES: dict[str, str] = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}

_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
CONFIG_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def to_torch(name: str):
    import torch

    return getattr(torch, _TORCH_NAMES[name])


def from_torch(dtype) -> str:
    text = str(dtype).removeprefix("torch.")
    for key, value in _TORCH_NAMES.items():
        if value == text:
            return key
    raise ValueError(f"unsupported torch dtype {dtype}")


def is_float(name: str) -> bool:
    return name in {"F64", "F32", "F16", "BF16"}
