#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures tests/test_pytorch_reference.cpp compares against.

    /usr/bin/python3 tools/make_fixtures.py [output dir]   (default tests/fixtures/pytorch)

Needs PyTorch (written with 1.13, float32 on CPU); nothing else. Every case builds a small module
with a fixed seed (dropout 0), runs it on fixed random inputs, and writes one <case>.safetensors:

    <library parameter names>   the weights, in eigenformer's names and layouts, so that
                                load_safetensors loads them into the library's layer directly
    input.<name>                inputs; a (B, T, C) batch is stored as its (B*T, C) matrix, token
                                ids and masks as F32 (ids exactly; masks 1 = masked, 0 = kept)
    R                           a random (N, C_out) matrix: the loss is sum(output * R)
    expected.<name>             the forward output(s), e.g. expected.y, (N, C_out)
    grad.<name>                 d loss / d <name> for every parameter and every float input
    __metadata__                the case's configuration (d_model, n_heads, activation, ...)

The position cases (mha_rotary, mha_relative) are self-attention written out in PyTorch with RoPE
(rotate_half, as GPT-NeoX / HF LLaMA) or T5's relative bias (T5's _relative_position_bucket and an
nn.Embedding(num_buckets, n_heads), stored as the library's relative_bias); t5_buckets holds T5's
bucket of every relative position in -140..140 for three bucket settings.
The training case instead holds the initial weights, ids, the learning rate and
expected.losses, the 10 losses of 10 steps of cross-entropy (ignore_index = pad) + torch.optim.Adam.
The output is deterministic: running the script twice gives identical files.
"""
import math
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_pytorch import (Seq2SeqTransformer, export, library_state_dict,  # noqa: E402
                            split_in_proj, write_safetensors)

B = 2
D = 16
H = 2
D_FF = 32
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                       "pytorch")


def flat(t):
    """(B, T, C) -> (B*T, C); 1-D and 2-D tensors unchanged."""
    return t.reshape(-1, t.shape[-1]) if t.dim() == 3 else t


def randomize_(module, scale=0.5):
    """Non-trivial values for every parameter (PyTorch initialises biases and LayerNorms to 0 and 1,
    which would leave their gradients' effect untested): weights keep their init plus noise,
    biases get noise, LayerNorm weights 1 + noise."""
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif p.dim() == 1:
                    p.copy_(0.2 * torch.randn_like(p))
                else:
                    p.add_(scale * p.abs().mean() * torch.randn_like(p))


def layer_params(module, grads=False):
    """A module's parameters (or gradients) in library names: MultiheadAttention children split,
    everything else unchanged."""
    out = {}
    for name, p in module.named_parameters():
        t = p.grad if grads else p
        if name.endswith("in_proj_weight"):
            prefix = name[: -len(".in_proj_weight")] if "." in name else ""
            bias_name = (prefix + "." if prefix else "") + "in_proj_bias"
            b = dict(module.named_parameters())[bias_name]
            split_in_proj(out, prefix, t, b.grad if grads else b)
        elif name.endswith("in_proj_bias"):
            continue
        else:
            out[name] = t
    return {k.lstrip("."): v for k, v in out.items()}


def save_case(out_dir, case, weights, inputs, R, expected, grads, meta,
              generator="tools/make_fixtures.py"):
    tensors = {}
    for k, v in weights.items():
        tensors[k] = v
    for k, v in inputs.items():
        tensors["input." + k] = flat(v)
    tensors["R"] = flat(R)
    for k, v in expected.items():
        tensors["expected." + k] = flat(v)
    for k, v in grads.items():
        tensors["grad." + k] = flat(v)
    meta = dict(meta, case=case, generator=generator,
                torch=torch.__version__.split("+")[0])
    write_safetensors(os.path.join(out_dir, case + ".safetensors"), tensors, meta)


def run_case(out_dir, case, module, inputs, call, meta, float_inputs):
    """Runs y = call(module, inputs), loss = sum(y * R), and saves weights, inputs, output and the
    gradients of every parameter and of the inputs named in float_inputs."""
    for k in float_inputs:
        inputs[k].requires_grad_(True)
    weights = {k: v.detach().clone() for k, v in layer_params(module).items()}
    y = call(module, inputs)
    R = torch.randn_like(y)
    (y * R).sum().backward()
    grads = layer_params(module, grads=True)
    for k in float_inputs:
        grads[k] = inputs[k].grad
    save_case(out_dir, case, weights, inputs, R, {"y": y}, grads, meta)


# ---------------------------------------------------------------------------------------------
# Cases


def case_layernorm(out_dir):
    torch.manual_seed(1)
    m = nn.LayerNorm(D, eps=1e-5)
    randomize_(m)
    x = {"x": 2.0 * torch.randn(B, 4, D) + 3.0}
    run_case(out_dir, "layernorm", m, x, lambda m, i: m(i["x"]), {"eps": 1e-5}, ["x"])


def case_linear(out_dir):
    torch.manual_seed(2)
    m = nn.Linear(12, D)
    x = {"x": torch.randn(B, 4, 12)}
    run_case(out_dir, "linear", m, x, lambda m, i: m(i["x"]), {"in": 12, "out": D}, ["x"])


def case_embedding(out_dir):
    torch.manual_seed(3)
    m = nn.Embedding(10, D, padding_idx=0)
    ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])
    weights = {"weight": m.weight.detach().clone()}
    y = m(ids)
    R = torch.randn_like(y)
    (y * R).sum().backward()
    save_case(out_dir, "embedding", weights, {"ids": ids.float()}, R, {"y": y},
              {"weight": m.weight.grad}, {"vocab": 10, "d_model": D, "padding_idx": 0})


def padding_mask(T, key_padding):
    """(B, T) bool mask with the last key_padding[b] keys of sequence b padded (None: no mask)."""
    if key_padding is None:
        return None
    kpm = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(key_padding):
        if n:
            kpm[b, T - n:] = True
    return kpm


def mha_case(out_dir, case, seed, Tq, Tk, cross, causal=False, key_padding=None, attn_mask=None):
    """nn.MultiheadAttention; attn_mask, when given (bool or float, (Tq, Tk) or (B*H, Tq, Tk)), is
    stored as input.attn_mask (bool) or input.attn_bias (float), 3-D ones as (B*H*Tq, Tk)."""
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(D, H, dropout=0.0, batch_first=True)
    randomize_(m)
    inputs = {"x": torch.randn(B, Tq, D)}
    if cross:
        inputs["memory"] = torch.randn(B, Tk, D)
    if attn_mask is not None:
        name = "attn_mask" if attn_mask.dtype == torch.bool else "attn_bias"
        inputs[name] = attn_mask.reshape(-1, Tk).float()
    elif causal:
        attn_mask = torch.triu(torch.ones(Tq, Tk, dtype=torch.bool), diagonal=1)
    kpm = padding_mask(Tk, key_padding)
    if kpm is not None:
        inputs["key_padding_mask"] = kpm.float()

    def call(m, i):
        mem = i["memory"] if cross else i["x"]
        y, _ = m(i["x"], mem, mem, attn_mask=attn_mask, key_padding_mask=kpm, need_weights=False)
        return y

    meta = {"d_model": D, "n_heads": H, "B": B, "Tq": Tq, "Tk": Tk,
            "cross": str(cross).lower(), "causal": str(causal).lower()}
    run_case(out_dir, case, m, inputs, call, meta, ["x", "memory"] if cross else ["x"])


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
    """T5's _relative_position_bucket (Hugging Face transformers' T5Attention), unchanged."""
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1))
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


class PositionalSelfAttention(nn.Module):
    """Self-attention with RoPE (kind "rotary") or a T5 relative bias (kind "relative") in the
    library's layout: separate q/k/v/out projections, scores Q K^T / sqrt(dh) + bias."""

    def __init__(self, d_model, n_heads, kind, rotary_base=10000.0, num_buckets=32,
                 max_distance=128, bidirectional=True):
        super().__init__()
        self.h, self.dh, self.kind = n_heads, d_model // n_heads, kind
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(d_model, d_model) for _ in range(4))
        self.rotary_base = rotary_base
        self.num_buckets, self.max_distance, self.bidirectional = (num_buckets, max_distance,
                                                                   bidirectional)
        if kind == "relative":
            self.relative_bias = nn.Embedding(num_buckets, n_heads)

    def forward(self, x, causal=False, key_padding_mask=None):
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.h, self.dh).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, T, dh)
        if self.kind == "rotary":  # angles in double, as the library computes its table
            inv_freq = 1.0 / (self.rotary_base ** (
                torch.arange(0, self.dh, 2, dtype=torch.float64) / self.dh))
            freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos().float(), emb.sin().float()
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh)
        if self.kind == "relative":
            pos = torch.arange(T)
            bucket = relative_position_bucket(pos[None, :] - pos[:, None], self.bidirectional,
                                              self.num_buckets, self.max_distance)
            scores = scores + self.relative_bias(bucket).permute(2, 0, 1).unsqueeze(0)
        if causal:
            scores = scores.masked_fill(
                torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), float("-inf"))
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
        return self.out_proj(y)


def positional_mha_case(out_dir, case, seed, kind, causal, key_padding=None, **positions):
    torch.manual_seed(seed)
    d_model, n_heads, T = 8, 2, 6
    m = PositionalSelfAttention(d_model, n_heads, kind, **positions)
    randomize_(m)
    inputs = {"x": torch.randn(B, T, d_model)}
    kpm = padding_mask(T, key_padding)
    if kpm is not None:
        inputs["key_padding_mask"] = kpm.float()
    meta = {"d_model": d_model, "n_heads": n_heads, "B": B, "T": T, "positions": kind,
            "causal": str(causal).lower()}
    for k, v in positions.items():
        meta[k] = str(v).lower() if isinstance(v, bool) else v
    inputs["x"].requires_grad_(True)
    y = m(inputs["x"], causal=causal, key_padding_mask=kpm)
    R = torch.randn_like(y)
    (y * R).sum().backward()

    def library_names(grads):
        out = {}
        for name, p in m.named_parameters():
            t = p.grad if grads else p.detach().clone()
            out["relative_bias" if name == "relative_bias.weight" else name] = t
        return out

    grads = library_names(True)
    grads["x"] = inputs["x"].grad
    save_case(out_dir, case, library_names(False), inputs, R, {"y": y}, grads, meta)


def t5_buckets_case(out_dir, case):
    """T5's bucket of relative positions -140..140 (beyond max_distance 128) for three settings."""
    rel = torch.arange(-140, 141)
    tensors = {"relative_position": rel.float()}
    settings = [(True, 32, 128), (False, 32, 128), (True, 8, 20)]
    for bidirectional, num_buckets, max_distance in settings:
        kind = "bidirectional" if bidirectional else "causal"
        name = f"bucket.{kind}_{num_buckets}_{max_distance}"
        tensors[name] = relative_position_bucket(rel, bidirectional, num_buckets,
                                                 max_distance).float()
    meta = {"case": case, "generator": "tools/make_fixtures.py",
            "torch": torch.__version__.split("+")[0],
            "settings": ";".join(f"{str(b).lower()},{n},{d}" for b, n, d in settings)}
    write_safetensors(os.path.join(out_dir, case + ".safetensors"), tensors, meta)


def encoder_layer_case(out_dir, case, seed, activation, norm_first):
    torch.manual_seed(seed)
    m = nn.TransformerEncoderLayer(D, H, D_FF, dropout=0.0, activation=activation,
                                   batch_first=True, norm_first=norm_first)
    randomize_(m)
    T = 5
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[1, 3:] = True
    inputs = {"x": torch.randn(B, T, D), "key_padding_mask": kpm.float()}
    meta = {"d_model": D, "n_heads": H, "d_ff": D_FF, "activation": activation,
            "norm": "pre" if norm_first else "post", "eps": 1e-5, "B": B, "T": T}
    run_case(out_dir, case, m, inputs, lambda m, i: m(i["x"], src_key_padding_mask=kpm), meta,
             ["x"])


def decoder_layer_case(out_dir, case, seed, activation, norm_first):
    torch.manual_seed(seed)
    m = nn.TransformerDecoderLayer(D, H, D_FF, dropout=0.0, activation=activation,
                                   batch_first=True, norm_first=norm_first)
    randomize_(m)
    T, S = 4, 5
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    mem_kpm = torch.zeros(B, S, dtype=torch.bool)
    mem_kpm[0, 4:] = True
    inputs = {"x": torch.randn(B, T, D), "memory": torch.randn(B, S, D),
              "memory_key_padding_mask": mem_kpm.float()}

    def call(m, i):
        return m(i["x"], i["memory"], tgt_mask=causal, memory_key_padding_mask=mem_kpm)

    meta = {"d_model": D, "n_heads": H, "d_ff": D_FF, "activation": activation,
            "norm": "pre" if norm_first else "post", "eps": 1e-5, "B": B, "T": T, "S": S}
    run_case(out_dir, case, m, inputs, call, meta, ["x", "memory"])


# The full model: 2 + 2 layers, source and target vocabularies of 11 and 13, pad 0, BOS 1.
PAD = 0
SRC = torch.tensor([[5, 3, 8, 2, 7], [4, 9, 6, PAD, PAD]])
TGT_IN = torch.tensor([[1, 4, 11, 7], [1, 12, PAD, PAD]])
TGT_OUT = torch.tensor([[4, 11, 7, 2], [12, 2, PAD, PAD]])


def make_transformer(seed, activation, norm_first):
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(11, 13, d_model=D, n_heads=H, n_encoder_layers=2,
                               n_decoder_layers=2, d_ff=D_FF, dropout=0.0, activation=activation,
                               norm_first=norm_first, pad_id=PAD, max_len=16)
    randomize_(model)
    with torch.no_grad():  # the library's initial scale: N(0, 1/d_model), zero padding rows
        for e in (model.src_embed, model.tgt_embed):
            e.weight.normal_(0.0, D ** -0.5)
            e.weight[PAD].zero_()
    return model


def transformer_case(out_dir, case, seed, activation, norm_first):
    model = make_transformer(seed, activation, norm_first)
    weights = {k: v.detach().clone() for k, v in library_state_dict(model.state_dict()).items()}
    logits = model(SRC, TGT_IN)
    R = torch.randn_like(logits)
    (logits * R).sum().backward()
    grads = library_state_dict({k: p.grad for k, p in model.named_parameters()})
    meta = {k: v for k, v in model.config.items()}
    save_case(out_dir, case, weights, {"src": SRC.float(), "tgt_in": TGT_IN.float()}, R,
              {"logits": logits}, grads, meta)
    return model


def training_case(out_dir, case, seed, steps=10, lr=1e-2):
    model = make_transformer(seed, "relu", False)
    weights = {k: v.detach().clone() for k, v in library_state_dict(model.state_dict()).items()}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        logits = model(SRC, TGT_IN)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), TGT_OUT.reshape(-1),
                               ignore_index=PAD)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tensors = dict(weights)
    tensors["input.src"] = SRC.float()
    tensors["input.tgt_in"] = TGT_IN.float()
    tensors["input.tgt_out"] = TGT_OUT.float()
    tensors["expected.losses"] = torch.tensor(losses, dtype=torch.float32)
    meta = dict(model.config, case=case, generator="tools/make_fixtures.py", steps=steps, lr=lr,
                optimizer="torch.optim.Adam(betas=(0.9, 0.999), eps=1e-8)",
                torch=torch.__version__.split("+")[0])
    write_safetensors(os.path.join(out_dir, case + ".safetensors"), tensors, meta)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else OUT_DIR
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)  # the same reduction order on every machine
    case_layernorm(out_dir)
    case_linear(out_dir)
    case_embedding(out_dir)
    mha_case(out_dir, "mha_self", 10, 4, 4, cross=False)
    mha_case(out_dir, "mha_cross", 11, 3, 5, cross=True)
    mha_case(out_dir, "mha_causal", 12, 4, 4, cross=False, causal=True)
    mha_case(out_dir, "mha_key_padding", 13, 3, 5, cross=True, key_padding=[1, 2])
    positional_mha_case(out_dir, "mha_rotary", 14, "rotary", causal=True, rotary_base=10000.0)
    positional_mha_case(out_dir, "mha_relative", 15, "relative", causal=False,
                        key_padding=[0, 2], num_buckets=8, max_distance=4, bidirectional=True)
    t5_buckets_case(out_dir, "t5_buckets")
    seed = 20
    for activation in ("relu", "gelu"):
        for norm_first in (False, True):
            norm = "pre" if norm_first else "post"
            encoder_layer_case(out_dir, f"encoder_layer_{activation}_{norm}", seed, activation,
                               norm_first)
            decoder_layer_case(out_dir, f"decoder_layer_{activation}_{norm}", seed + 1,
                               activation, norm_first)
            seed += 2
    post = transformer_case(out_dir, "transformer_post", 30, "relu", False)
    transformer_case(out_dir, "transformer_pre", 31, "gelu", True)
    # The checkpoint tools/export_pytorch.py writes for the post-norm model: weights only.
    export(post, os.path.join(out_dir, "transformer_post_checkpoint.safetensors"))
    training_case(out_dir, "transformer_training", 32)


if __name__ == "__main__":
    main()
