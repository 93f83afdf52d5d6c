"""Imported at interpreter start-up (this folder is put on PYTHONPATH) by the LLaVA eval-script tests:
lets the LLaVA repository's ``llava/eval/model_vqa*.py`` run unmodified on a CPU-only machine.

Stubs, and nothing else (each is GPU-only in the scripts):
- ``Tensor.cuda()`` / ``Module.cuda()`` return the object unchanged (it stays on the CPU);
- ``Tensor.to(...)`` with the device ``"cuda"`` (``model_vqa_loader.py``'s ``.to(device='cuda')``) moves to
  the CPU instead;
- with ``MMZOO_SHIM_FLOAT32=1`` only: half precision becomes float32 (``from_pretrained(torch_dtype=
  torch.float16)`` in LLaVA's ``load_pretrained_model``, ``Tensor.half()``, ``Tensor.to(dtype=torch.float16)``),
  for comparisons with float32 references. Without it the scripts run in float16 as on a GPU (CPU kernels
  exist for every op they use).
"""
import os

import torch

FLOAT32 = os.environ.get("MMZOO_SHIM_FLOAT32") == "1"


def _cpu(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _dtype(dtype):
    return torch.float32 if FLOAT32 and dtype is torch.float16 else dtype


_tensor_to = torch.Tensor.to


def _to(self, *args, **kwargs):
    args = tuple(_dtype(_cpu(a)) for a in args)
    if "device" in kwargs:
        kwargs["device"] = _cpu(kwargs["device"])
    if "dtype" in kwargs:
        kwargs["dtype"] = _dtype(kwargs["dtype"])
    return _tensor_to(self, *args, **kwargs)


torch.Tensor.to = _to
torch.Tensor.cuda = lambda self, *args, **kwargs: self
torch.nn.Module.cuda = lambda self, *args, **kwargs: self

if FLOAT32:
    _half = torch.Tensor.half
    torch.Tensor.half = lambda self, *args, **kwargs: self.float() if self.is_floating_point() else _half(self, *args, **kwargs)

    from transformers import modeling_utils

    _from_pretrained = modeling_utils.PreTrainedModel.from_pretrained.__func__

    @classmethod
    def _from_pretrained_float32(cls, *args, **kwargs):
        if kwargs.get("torch_dtype") is torch.float16:
            kwargs["torch_dtype"] = torch.float32
        return _from_pretrained(cls, *args, **kwargs)

    modeling_utils.PreTrainedModel.from_pretrained = _from_pretrained_float32
