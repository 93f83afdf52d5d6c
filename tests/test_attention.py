"""attn_implementation: sdpa (default) and eager agree; flash-attn is optional with a clear message."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import mmzoo
from mmzoo.errors import MissingDependency, MmzooError
from mmzoo.demo.tiny import sample_inputs


def test_sdpa_and_eager_give_the_same_logits(tiny):
    sdpa = mmzoo.load_model(tiny.hf())
    eager = mmzoo.load_model(tiny.hf(), attn_implementation="eager")
    assert sdpa.config.text_config._attn_implementation == "sdpa"
    assert eager.config.text_config._attn_implementation == "eager"
    inputs = sample_inputs(sdpa)
    with torch.no_grad():
        assert torch.allclose(sdpa(**inputs).logits, eager(**inputs).logits, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_without_flash_attn_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(MissingDependency, match=r"pip install 'mmzoo\[flash\]'"):
        mmzoo.load_model(tiny.hf(), attn_implementation="flash_attention_2")
    with pytest.raises(MmzooError, match="choose from sdpa, eager, flash_attention_2"):
        mmzoo.load_model(tiny.hf(), attn_implementation="fast")
