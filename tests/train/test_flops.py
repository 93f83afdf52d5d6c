"""The closed-form model FLOPs (mmzoo.train.flops, the numerator of the training benchmark's MFU) against
torch's FlopCounterMode on real transformers LLaVA models: exact integer equality, per stage."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop, sdpa_flop_count

from mmzoo.train.flops import training_step_flops

# torch's counter knows the CUDA attention kernels; teach it the CPU one with the same formulas, so the
# models run as they train (sdpa) and their attention is counted.
def _as_is(formula):
    """torch's registered formulas already take tensors (they unwrap shapes themselves): mark them raw."""
    def counted(*args, **kwargs):
        return formula(*args, **kwargs)

    counted._get_raw = True
    return counted


def _model_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    """dQ, dK, dV and dP: twice the forward. torch's own backward formula adds the kernel's recomputation of
    QKᵀ (hardware FLOPs); MFU counts model FLOPs, as the eager parametrisation below confirms."""
    return 2 * sdpa_flop_count(query.shape, key.shape, value.shape)


_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _as_is(sdpa_flop),
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _as_is(_model_backward)}


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_CPU_SDPA)


ARCHS = [("llama", "clip"), ("qwen2", "siglip"), ("phi3", "clip")]


@pytest.fixture(scope="module", params=ARCHS, ids=lambda a: "+".join(a))
def checkpoint(request, tmp_path_factory):
    from mmzoo.demo.tiny import build_llava

    out = tmp_path_factory.mktemp("flops") / "+".join(request.param)
    build_llava(out, text_arch=request.param[0], vision_arch=request.param[1])
    return out


def _batch(model, sequences: int):
    from mmzoo.demo.tiny import sample_inputs

    rows = [sample_inputs(model, n_images=2, seq_text=5, seed=seed) for seed in range(sequences)]
    batch = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    batch["labels"] = batch["input_ids"].clone()
    return batch


def _counted(model, batch) -> int:
    with _counter() as counter:
        model(**batch).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("trained", [("projector",), ("projector", "text"), ("vision", "projector", "text"), ("text",), ()],
                         ids=lambda t: "+".join(t) or "nothing")
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_closed_form_equals_counted(checkpoint, trained, attn):
    from mmzoo.models.load import load_model

    model = load_model(checkpoint, attn_implementation=attn)
    for name, param in model.named_parameters():
        part = "vision" if "vision_tower." in name else "projector" if "multi_modal_projector." in name else "text"
        param.requires_grad_(part in trained)
    if not trained:  # nothing trains: the loss has no graph; count a forward only
        model.lm_head.weight.requires_grad_(False)
    batch = _batch(model, sequences=3)
    sequences, seq_len = batch["input_ids"].shape
    expected = training_step_flops(model, sequences=sequences, seq_len=seq_len, images=batch["pixel_values"].shape[0])
    assert _counted_attention_share(model, batch) > 0.05  # attention is really in the count
    if not trained:
        with _counter() as counter, torch.no_grad():
            model(**batch)
        assert counter.get_total_flops() == expected.total
        return
    assert _counted(model, batch) == expected.total
    assert expected.vision > 0 and expected.projector > 0 and expected.text > expected.projector


def _counted_attention_share(model, batch) -> float:
    with _counter() as counter, torch.no_grad():
        model(**batch)
    ops = counter.get_flop_counts()["Global"]
    products = ("aten.mm", "aten.addmm", "aten.convolution")  # linear layers and the patch embedding
    return sum(v for op, v in ops.items() if str(op) not in products) / counter.get_total_flops()


def test_moe_models_are_refused(tmp_path):
    from mmzoo.converters.pipeline import convert
    from mmzoo.errors import MmzooError
    from mmzoo.models.load import load_model
    from mmzoo.demo.tiny import build_llava

    build_llava(tmp_path / "dense")
    convert(tmp_path / "dense", tmp_path / "moe", tgt_fmt="internal", moe=dict(num_experts=2, top_k=1))
    with pytest.raises(MmzooError, match="dense models"):
        training_step_flops(load_model(tmp_path / "moe"), sequences=1, seq_len=8, images=1)


def test_step_counter_equals_the_closed_form_for_any_shape_and_packed_rows(ws):
    """The counter's four coefficients reproduce training_step_flops exactly, padded or packed, with the LM head
    over every position or over the labelled ones."""
    from mmzoo.models.load import load_model
    from mmzoo.train.flops import StepFlopsCounter, training_step_flops

    model = load_model(ws.hf)
    for name, param in model.named_parameters():
        param.requires_grad_("vision_tower" not in name)
    counter = StepFlopsCounter(model)
    for sequences, seq_len, images in ((1, 7, 0), (3, 50, 2), (8, 131, 9)):
        assert counter(sequences, seq_len, images) == training_step_flops(
            model, sequences=sequences, seq_len=seq_len, images=images).total
    lengths = (30, 41, 17)
    assert counter(1, sum(lengths), 3, attention_lengths=lengths) == training_step_flops(
        model, sequences=1, seq_len=sum(lengths), images=3, attention_lengths=lengths).total
    for loss_rows in (0, 1, 29, 88):
        assert counter(1, sum(lengths), 3, attention_lengths=lengths, loss_rows=loss_rows) == training_step_flops(
            model, sequences=1, seq_len=sum(lengths), images=3, attention_lengths=lengths, loss_rows=loss_rows).total
        assert counter(2, 44, 1, loss_rows=loss_rows) == training_step_flops(
            model, sequences=2, seq_len=44, images=1, loss_rows=loss_rows).total


def test_the_lm_head_counts_only_the_positions_the_loss_reads(ws):
    """loss_rows changes the LM head's products and nothing else: 6 × hidden × vocabulary FLOPs per position when
    it trains (forward, input gradient, weight gradient), 4 when it is frozen and the LLM below it trains."""
    from mmzoo.models.load import load_model
    from mmzoo.train.flops import training_step_flops

    model = load_model(ws.hf)
    head = model.get_output_embeddings().weight
    for head_trains, per_product in ((True, 6), (False, 4)):
        for name, param in model.named_parameters():
            param.requires_grad_("vision_tower" not in name and (head_trains or "lm_head" not in name))
        every = training_step_flops(model, sequences=2, seq_len=40, images=2)
        labelled = training_step_flops(model, sequences=2, seq_len=40, images=2, loss_rows=13)
        assert (every.vision, every.projector) == (labelled.vision, labelled.projector)
        assert every.text - labelled.text == per_product * (80 - 13) * head.shape[0] * head.shape[1]


def test_loss_positions_are_those_followed_by_a_label():
    """The training loop's count of LM-head rows: a position counts when the next token has a label (the loss's
    shift), in padded rows and in a packed row whose samples each begin unlabelled."""
    import torch

    from mmzoo.train.flops import loss_positions

    padded = {"labels": torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])}
    assert loss_positions(padded) == 4
    packed = {"labels": torch.tensor([[-100, -100, 3, 4, -100, -100, 9]])}  # samples of 4 and 3 tokens
    assert loss_positions(packed) == 3


def test_a_micro_batch_is_counted_as_the_pipeline_hands_it_over(ws):
    """StepFlopsCounter.micro_batch reads the shapes, images, samples and labels of a padded or packed CPU batch:
    the LM head at the positions the loss reads, or at every position (teacher stages)."""
    import torch

    from mmzoo.models.load import load_model
    from mmzoo.train.flops import StepFlopsCounter, loss_positions

    counter = StepFlopsCounter(load_model(ws.hf))
    labels = torch.full((2, 44), -100)
    labels[0, 30:40] = 7
    padded = {"input_ids": torch.zeros(2, 44, dtype=torch.long), "labels": labels, "pixel_values": torch.zeros(1, 3, 8, 8)}
    assert loss_positions(padded) == 10
    assert counter.micro_batch(padded) == counter(2, 44, 1, loss_rows=10)
    assert counter.micro_batch(padded, every_position=True) == counter(2, 44, 1) > counter.micro_batch(padded)
    lengths = torch.tensor([30, 41, 17])
    packed = {"input_ids": torch.zeros(1, 88, dtype=torch.long), "labels": torch.full((1, 88), -100),
              "sample_lengths": lengths, "pixel_values": torch.zeros(3, 3, 8, 8)}
    packed["labels"][0, 50:60] = 3
    assert counter.micro_batch(packed) == counter(1, 88, 3, attention_lengths=(30, 41, 17), loss_rows=10)
