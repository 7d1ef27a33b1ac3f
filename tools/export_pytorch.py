#!/usr/bin/python3
"""Export a PyTorch encoder-decoder Transformer to a safetensors checkpoint in eigenformer's names.

The PyTorch model must have the structure of `Seq2SeqTransformer` below (its state_dict names are
what the mapping reads; the class itself is not required):

    src_embed          nn.Embedding(src_vocab, d_model, padding_idx=pad_id)
    tgt_embed          nn.Embedding(tgt_vocab, d_model, padding_idx=pad_id)
    encoder            nn.TransformerEncoder of nn.TransformerEncoderLayer(batch_first=True),
                       norm=None for post-norm layers, norm=nn.LayerNorm(d_model) for norm_first=True
    decoder            nn.TransformerDecoder of nn.TransformerDecoderLayer(batch_first=True),
                       with the same rule for its final norm
    generator          nn.Linear(d_model, tgt_vocab)   (the output projection, with bias)

and compute what eigenformer's Transformer<float> computes: embeddings scaled by sqrt(d_model) plus
the sinusoidal table of "Attention Is All You Need" (computed in double, stored as float32), no
dropout at inference, source padding masking the encoder keys and the cross-attention keys, a
causal decoder self-attention that also masks target padding. Note that nn.Transformer itself
does NOT have this structure: it always adds final LayerNorms to both stacks, also for post-norm
layers, where eigenformer has none.

Name mapping (PyTorch state_dict -> eigenformer Transformer::parameters()):

    src_embed.weight                                -> encoder.embedding.weight
    tgt_embed.weight                                -> decoder.embedding.weight
    {encoder,decoder}.layers.i.self_attn.in_proj_weight (3d, d)
        rows [0, d), [d, 2d), [2d, 3d)              -> ....self_attn.{q,k,v}_proj.weight (d, d)
    {encoder,decoder}.layers.i.self_attn.in_proj_bias (3d)
                                                    -> ....self_attn.{q,k,v}_proj.bias (d)
    decoder.layers.i.multihead_attn.in_proj_*       -> decoder.layers.i.multihead_attn.{q,k,v}_proj.*
    ....{self_attn,multihead_attn}.out_proj.*       -> unchanged
    ....layers.i.linear1.*, linear2.*               -> unchanged
    ....layers.i.norm1.*, norm2.*, norm3.*          -> unchanged
    encoder.norm.*, decoder.norm.* (pre-norm only)  -> unchanged
    generator.weight, generator.bias                -> output.weight, output.bias

Usage:
    python3 tools/export_pytorch.py model.pt checkpoint.safetensors

where model.pt is a torch.save()d Seq2SeqTransformer or a state_dict with the names above. The
tensors are written as little-endian float32 in eigenformer's order; the model kind and config go
to the file's __metadata__ in eigenformer's keys, so eigenformer::load_model<Transformer<float>>
rebuilds the model from the file alone.
"""
import json
import math
import re
import struct
import sys

import torch
from torch import nn


# ---------------------------------------------------------------------------------------------
# The reference model


def sinusoidal_table(max_len, d_model):
    """(max_len, d_model) float32: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...),
    computed in double exactly as eigenformer's SinusoidalPositionalEncoding."""
    rows = []
    for pos in range(max_len):
        row = []
        for j in range(d_model):
            inv_freq = math.pow(10000.0, -float(j - j % 2) / float(d_model))
            angle = float(pos) * inv_freq
            row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).to(torch.float32)


class Seq2SeqTransformer(nn.Module):
    """The encoder-decoder Transformer as eigenformer builds it (see the module docstring)."""

    def __init__(self, src_vocab, tgt_vocab, d_model=512, n_heads=8, n_encoder_layers=6,
                 n_decoder_layers=6, d_ff=2048, dropout=0.1, activation="relu", norm_first=False,
                 pad_id=0, max_len=512, eps=1e-5):
        super().__init__()
        self.config = dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, d_model=d_model,
                           n_heads=n_heads, n_encoder_layers=n_encoder_layers,
                           n_decoder_layers=n_decoder_layers, d_ff=d_ff, dropout=dropout,
                           activation=activation, norm="pre" if norm_first else "post",
                           positional="sinusoidal", scale_embeddings=True, tie_output=False,
                           pad_id=pad_id, max_len=max_len, eps=eps)
        self.d_model, self.pad_id = d_model, pad_id
        pad = pad_id if pad_id >= 0 else None
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=pad)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=pad)
        self.dropout = nn.Dropout(dropout)
        enc_layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, activation,
                                               layer_norm_eps=eps, batch_first=True,
                                               norm_first=norm_first)
        dec_layer = nn.TransformerDecoderLayer(d_model, n_heads, d_ff, dropout, activation,
                                               layer_norm_eps=eps, batch_first=True,
                                               norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(
            enc_layer, n_encoder_layers,
            norm=nn.LayerNorm(d_model, eps=eps) if norm_first else None,
            enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            dec_layer, n_decoder_layers,
            norm=nn.LayerNorm(d_model, eps=eps) if norm_first else None)
        self.generator = nn.Linear(d_model, tgt_vocab)
        self.register_buffer("pe", sinusoidal_table(max_len, d_model), persistent=False)

    def embed(self, embedding, ids):
        x = embedding(ids) * math.sqrt(self.d_model) + self.pe[: ids.shape[1]]
        return self.dropout(x)

    def forward(self, src, tgt_in):
        """src (B, S), tgt_in (B, T) int64 -> logits (B, T, tgt_vocab)."""
        src_pad = src == self.pad_id
        tgt_pad = tgt_in == self.pad_id
        T = tgt_in.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        memory = self.encoder(self.embed(self.src_embed, src), src_key_padding_mask=src_pad)
        h = self.decoder(self.embed(self.tgt_embed, tgt_in), memory, tgt_mask=causal,
                         tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        return self.generator(h)


# ---------------------------------------------------------------------------------------------
# Name mapping


def split_in_proj(out, lib_prefix, weight, bias):
    """nn.MultiheadAttention's packed (3d, d) in_proj_weight / (3d) in_proj_bias -> q/k/v_proj."""
    d = weight.shape[1]
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{lib_prefix}.{part}.weight"] = weight[i * d:(i + 1) * d]
        if bias is not None:
            out[f"{lib_prefix}.{part}.bias"] = bias[i * d:(i + 1) * d]


_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_ATTN = ("self_attn", "multihead_attn")


def library_state_dict(state):
    """Maps a Seq2SeqTransformer state_dict (name -> tensor; gradients work too) onto eigenformer's
    Transformer names, in eigenformer's parameter order. Raises KeyError on an unmapped name."""
    mapped = {}  # library name -> tensor
    for name, t in state.items():
        m = _LAYER.match(name)
        if name == "src_embed.weight":
            mapped["encoder.embedding.weight"] = t
        elif name == "tgt_embed.weight":
            mapped["decoder.embedding.weight"] = t
        elif name in ("generator.weight", "generator.bias"):
            mapped["output." + name.split(".")[1]] = t
        elif re.match(r"^(encoder|decoder)\.norm\.(weight|bias)$", name):
            mapped[name] = t
        elif m:
            rest = m.group(3)
            attn = rest.split(".")[0]
            if attn in _ATTN and rest in (attn + ".in_proj_weight", attn + ".in_proj_bias"):
                if rest.endswith("weight"):
                    prefix = name[: -len(".in_proj_weight")]
                    split_in_proj(mapped, prefix, t, state.get(prefix + ".in_proj_bias"))
                continue  # the bias is split together with its weight
            if re.match(r"^((self_attn|multihead_attn)\.out_proj|linear[12]|norm[123])\."
                        r"(weight|bias)$", rest):
                mapped[name] = t
            else:
                raise KeyError(f"export_pytorch: no eigenformer name for '{name}'")
        else:
            raise KeyError(f"export_pytorch: no eigenformer name for '{name}'")
    return {k: mapped[k] for k in sorted(mapped, key=_library_order)}


def _library_order(name):
    """Sort key giving Transformer::parameters() order."""
    stack = {"encoder": 0, "decoder": 1, "output": 2}[name.split(".")[0]]
    m = _LAYER.match(name)
    if name.endswith("embedding.weight"):
        return (stack, 0, 0, 0, 0)
    if m is None:  # final norm or output projection
        return (stack, 2, 0, 0, 0 if name.endswith("weight") else 1)
    rest = m.group(3).split(".")
    block = ["self_attn", "multihead_attn", "linear1", "linear2", "norm1", "norm2",
             "norm3"].index(rest[0])
    proj = ["q_proj", "k_proj", "v_proj", "out_proj"].index(rest[1]) if len(rest) == 3 else 0
    return (stack, 1, int(m.group(2)), block * 10 + proj, 0 if rest[-1] == "weight" else 1)


# ---------------------------------------------------------------------------------------------
# safetensors writing (no dependency on the safetensors package)


def _meta_str(v):
    """Metadata values are strings: booleans as true/false, floats by repr (round-trips)."""
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


def write_safetensors(path, tensors, metadata=None):
    """Writes name -> tensor (any float dtype, stored as little-endian F32; 1-D and 2-D) in the
    given order, with optional string metadata. Byte-for-byte deterministic."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): _meta_str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().to(torch.float32).contiguous().cpu()
        raw = struct.pack("<%df" % t.numel(), *t.reshape(-1).tolist())
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def config_metadata(model):
    """The metadata eigenformer::save_model writes, so load_model<Transformer<float>>(path) can
    rebuild the model from the file alone: the model kind and eigenformer.config.<field>."""
    cfg = getattr(model, "config", None) or {}
    meta = {"eigenformer.model": "transformer", "source": "tools/export_pytorch.py"}
    for key, value in cfg.items():
        meta["eigenformer.config." + key] = ("1" if value else "0") if isinstance(value, bool) \
            else value
    return meta


def export(model, path):
    """Writes model's parameters in eigenformer's names to path (a safetensors checkpoint that
    load_safetensors(path, transformer.parameters()) accepts)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    write_safetensors(path, library_state_dict(state),
                      config_metadata(model) if isinstance(model, nn.Module) else None)


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    model = torch.load(argv[1], map_location="cpu")
    export(model, argv[2])


if __name__ == "__main__":
    main(sys.argv)
