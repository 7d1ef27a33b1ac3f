#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures for the attention and loss options that PyTorch has:
per-head masks, float masks, model-level masks, kdim/vdim cross-attention, and cross-entropy's
reduction and class weights. tests/test_pytorch_reference.cpp compares against them.

    /usr/bin/python3 tools/make_parity_fixtures.py [output dir]   (default tests/fixtures/pytorch)

Same file layout as tools/make_fixtures.py (weights in the library's names, input.*, R, expected.*,
grad.*, __metadata__); masks are stored as F32: boolean masks 1 = masked, float masks as they are
(-inf included). PyTorch's 3-D attn_mask (B*H, Tq, Tk) is stored as the library's (B*H*Tq, Tk).
The output is deterministic: running the script twice gives identical files.
"""
import math
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_pytorch import library_state_dict, write_safetensors  # noqa: E402
from make_fixtures import (B, D, H, OUT_DIR, PAD, SRC, TGT_IN, make_transformer,  # noqa: E402
                           mha_case, padding_mask, randomize_, save_case)


def flat3(mask):
    """(B*H, Tq, Tk) -> (B*H*Tq, Tk), the library's per-head layout."""
    return mask.reshape(-1, mask.shape[-1])


def alibi(n_heads, Tq, Tk):
    """ALiBi's bias (B*H, Tq, Tk): head h adds -slope_h * (i - j), slope_h = 2^(-8 (h+1) / H)."""
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])
    dist = torch.arange(Tq)[:, None] + (Tk - Tq) - torch.arange(Tk)[None, :]
    per_head = -slopes[:, None, None] * dist[None].float()
    return per_head.repeat(B, 1, 1)


def mha_kdim_vdim_case(out_dir, case, seed, Tq, Tk, kdim, vdim):
    """Cross-attention whose keys and values have their own widths (separate q/k/v weights)."""
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(D, H, dropout=0.0, batch_first=True, kdim=kdim, vdim=vdim)
    randomize_(m)
    inputs = {"x": torch.randn(B, Tq, D), "key": torch.randn(B, Tk, kdim),
              "value": torch.randn(B, Tk, vdim)}
    kpm = padding_mask(Tk, [0, 2])
    inputs["key_padding_mask"] = kpm.float()
    for k in ("x", "key", "value"):
        inputs[k].requires_grad_(True)

    def library_names(grads):
        p = dict(m.named_parameters())
        g = (lambda t: t.grad) if grads else (lambda t: t.detach().clone())
        bias = g(p["in_proj_bias"])
        out = {}
        for i, part in enumerate(("q", "k", "v")):
            out[f"{part}_proj.weight"] = g(p[f"{part}_proj_weight"])
            out[f"{part}_proj.bias"] = bias[i * D:(i + 1) * D]
        out["out_proj.weight"] = g(p["out_proj.weight"])
        out["out_proj.bias"] = g(p["out_proj.bias"])
        return out

    weights = library_names(False)
    y, _ = m(inputs["x"], inputs["key"], inputs["value"], key_padding_mask=kpm, need_weights=False)
    R = torch.randn_like(y)
    (y * R).sum().backward()
    grads = library_names(True)
    for k in ("x", "key", "value"):
        grads[k] = inputs[k].grad
    meta = {"d_model": D, "n_heads": H, "B": B, "Tq": Tq, "Tk": Tk, "kdim": kdim, "vdim": vdim}
    save_case(out_dir, case, weights, inputs, R, {"y": y}, grads, meta)


def transformer_masks_case(out_dir, case, seed):
    """The encoder-decoder of make_fixtures.py with nn.Transformer's src_mask (per-head bool),
    tgt_mask (a prefix LM as a float mask: the first 2 target positions see each other, the rest
    is causal) and memory_mask (a per-head float bias), besides the padding masks."""
    model = make_transformer(seed, "relu", False)
    S, T = SRC.shape[1], TGT_IN.shape[1]
    g = torch.Generator().manual_seed(seed)
    src_mask = torch.rand(B * H, S, S, generator=g) < 0.25
    src_mask[:, :, 0] = False  # every query keeps key 0 (never padded): no fully masked row
    prefix = 2
    tgt_mask = torch.zeros(T, T)
    for i in range(T):
        for j in range(T):
            if j > max(i, prefix - 1):
                tgt_mask[i, j] = float("-inf")
    memory_mask = torch.randn(B * H, T, S, generator=g)
    weights = {k: v.detach().clone() for k, v in library_state_dict(model.state_dict()).items()}
    src_pad, tgt_pad = SRC == PAD, TGT_IN == PAD
    memory = model.encoder(model.embed(model.src_embed, SRC), mask=src_mask,
                           src_key_padding_mask=src_pad)
    h = model.decoder(model.embed(model.tgt_embed, TGT_IN), memory, tgt_mask=tgt_mask,
                      memory_mask=memory_mask, tgt_key_padding_mask=tgt_pad,
                      memory_key_padding_mask=src_pad)
    logits = model.generator(h)
    R = torch.randn_like(logits)
    (logits * R).sum().backward()
    grads = library_state_dict({k: p.grad for k, p in model.named_parameters()})
    inputs = {"src": SRC.float(), "tgt_in": TGT_IN.float(), "src_mask": flat3(src_mask).float(),
              "tgt_mask": tgt_mask, "memory_mask": flat3(memory_mask)}
    meta = dict(model.config, prefix=prefix)
    save_case(out_dir, case, weights, inputs, R, {"logits": logits}, grads, meta)


def cross_entropy_case(out_dir, case, seed):
    """F.cross_entropy for every reduction, with and without class weights and label smoothing,
    with ignored rows: expected.<config> the loss (none: per row), grad.<config> d sum(loss * R)
    / d logits for R.<config>."""
    torch.manual_seed(seed)
    N, V, ignore = 7, 5, 2
    logits = 2.0 * torch.randn(N, V)
    targets = torch.tensor([0, 2, 4, 1, 2, 3, 4])  # rows 1 and 4 ignored
    weight = torch.rand(V) + 0.25
    tensors = {"input.logits": logits, "input.targets": targets.float(), "input.weight": weight}
    configs = []
    for reduction in ("mean", "sum", "none"):
        for weighted in (False, True):
            for eps in (0.0, 0.2):
                name = f"{reduction}_{'weighted' if weighted else 'plain'}_{eps}"
                configs.append(name)
                x = logits.clone().requires_grad_(True)
                loss = F.cross_entropy(x, targets, weight=weight if weighted else None,
                                       ignore_index=ignore, reduction=reduction,
                                       label_smoothing=eps)
                R = torch.randn(loss.shape) if reduction == "none" else torch.tensor(1.5)
                (loss * R).sum().backward()
                tensors["expected." + name] = loss.detach().reshape(-1)
                tensors["R." + name] = R.reshape(-1)
                tensors["grad." + name] = x.grad
    meta = {"case": case, "generator": "tools/make_parity_fixtures.py",
            "torch": torch.__version__.split("+")[0], "ignore_index": ignore,
            "configs": ";".join(configs)}
    write_safetensors(os.path.join(out_dir, case + ".safetensors"), tensors, meta)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else OUT_DIR
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)  # the same reduction order on every machine
    g = torch.Generator().manual_seed(40)
    per_head = torch.rand(B * H, 4, 4, generator=g) < 0.3
    per_head[:, :, 1] = False  # no fully masked row (PyTorch gives NaN there)
    mha_case(out_dir, "mha_per_head_mask", 40, 4, 4, cross=False, attn_mask=per_head,
             key_padding=[0, 1])
    float_mask = alibi(H, 3, 5) + 0.5 * torch.randn(B * H, 3, 5, generator=g)
    float_mask[0, 1, 2] = float_mask[3, 0, 4] = float("-inf")
    mha_case(out_dir, "mha_float_mask", 41, 3, 5, cross=True, attn_mask=float_mask,
             key_padding=[1, 0])
    shared = torch.triu(torch.full((4, 4), float("-inf")), diagonal=1) + torch.randn(4, 4,
                                                                                    generator=g)
    mha_case(out_dir, "mha_float_mask_shared", 42, 4, 4, cross=False, attn_mask=shared)
    mha_kdim_vdim_case(out_dir, "mha_kdim_vdim", 43, 3, 5, kdim=6, vdim=10)
    transformer_masks_case(out_dir, "transformer_masks", 44)
    cross_entropy_case(out_dir, "cross_entropy_options", 45)


if __name__ == "__main__":
    main()
