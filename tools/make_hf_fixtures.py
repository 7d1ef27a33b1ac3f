#!/usr/bin/python3
"""Tiny GPT-2 and BERT checkpoints in Hugging Face's layout, and their reference outputs, for
tests/test_huggingface.cpp; or one tiny GPT-2 with GPT-2's real vocabulary for the examples.

    /usr/bin/python3 tools/make_hf_fixtures.py                 writes tests/fixtures/hf/
    /usr/bin/python3 tools/make_hf_fixtures.py --tiny-gpt2 DIR [--seed S]
        writes DIR/config.json and DIR/model.safetensors: a GPT-2 of 50257 tokens (the vocabulary
        of encoder.json / vocab.bpe), width 32, 2 layers, 2 heads, 128 positions, random weights
    /usr/bin/python3 tools/make_hf_fixtures.py --check-gpt2 DIR
        loads DIR (e.g. one eigenformer's save_gpt2 wrote) with the modules below and prints its
        logits on a fixed prompt, as a check that the file reads as Hugging Face's

`transformers` is not a Debian package, so the models are written out here in plain PyTorch (1.13,
float32 on CPU) with exactly the parameter names, layouts and numerics of transformers'
GPT2LMHeadModel and BertModel:
  GPT-2: wte + wpe, pre-norm blocks (ln_1, attn, ln_2, mlp), ln_f, lm_head tied to wte; Conv1D
         weights stored (in, out), c_attn (in, 3*out) holding q|k|v; gelu_new (the tanh GELU);
         LayerNorm eps layer_norm_epsilon (1e-5); masked scores set to the float minimum.
  BERT:  word + position + token_type embeddings, then LayerNorm; post-norm layers
         (attention.self.{query,key,value}, attention.output.{dense,LayerNorm}, intermediate.dense,
         output.{dense,LayerNorm}); GELU (erf); eps layer_norm_eps (1e-12); an optional pooler
         (dense + tanh on the first token); the attention mask added as (1 - mask) * float min.
Files are written as transformers' save_pretrained writes them (safetensors metadata
{"format": "pt"}, config.json with the same fields), and byte-for-byte deterministic.

tests/fixtures/hf/ holds:
  gpt2/           "transformer."-prefixed names (GPT2LMHeadModel), F32
  gpt2_noprefix/  no prefix (GPT2Model, as the Hub's gpt2 file), with the old attn.bias and
                  attn.masked_bias buffers, which a loader skips
  gpt2_f16/, gpt2_bf16/   gpt2/ in F16 and BF16
  bert/           "bert."-prefixed (BertForMaskedLM-like), with pooler, the position_ids buffer and
                  an MLM head tensor (cls.predictions.bias) that a loader of the encoder skips
  bert_noprefix/  no prefix, no pooler (BertModel(add_pooling_layer=False))
  bert_bf16/      bert/ in BF16
  gpt2_reference.safetensors  input.ids (B, T) F32, input.mask (B, T) 1 = real token, 0 = padding
                  (right padding with id 0, which the test makes the pad id), expected.logits
                  (B*T, V), expected.hidden (B*T, d) (after ln_f); kv.prompt (B, P), kv.steps
                  (B, S) and kv.logits (B*P + S*B, V): the prompt's logits (row b*P + t), then
                  those of each step fed one token at a time through the past keys and values
                  (step s of sequence b at row B*P + s*B + b); expected.loss: the mean next-token
                  cross-entropy over kv.prompt followed by kv.steps
  bert_reference.safetensors  input.ids, input.token_types, input.mask (B, T), expected.hidden
                  (B*T, d), expected.pooled (B, d)
"""
import argparse
import json
import math
import os
import struct

import torch
from torch import nn
import torch.nn.functional as F

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")

# ---------------------------------------------------------------------------------------------
# GPT-2, as transformers' modeling_gpt2.py


class Conv1D(nn.Module):
    """transformers' Conv1D: a linear layer whose weight is stored (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(
            *x.shape[:-1], -1)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def split_heads(x, n_head):
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).permute(0, 2, 1, 3)  # (B, H, T, dh)


def merge_heads(x):
    B, H, T, dh = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, T, H * dh)


class GPT2Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["n_embd"]
        self.n_head = cfg["n_head"]
        self.c_attn = Conv1D(3 * d, d)
        self.c_proj = Conv1D(d, d)

    def forward(self, x, past=None, attention_mask=None):
        q, k, v = self.c_attn(x).split(x.size(-1), dim=2)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=-2)
            v = torch.cat([past[1], v], dim=-2)
        w = q @ k.transpose(-1, -2) / math.sqrt(v.size(-1))
        Tq, Tk = q.size(-2), k.size(-2)
        causal = torch.ones(Tk, Tk, dtype=torch.bool).tril()[Tk - Tq:, :]
        w = torch.where(causal, w, torch.tensor(torch.finfo(w.dtype).min))
        if attention_mask is not None:  # (B, Tk) 1 = keep
            w = w + (1.0 - attention_mask[:, None, None, :]) * torch.finfo(w.dtype).min
        a = F.softmax(w, dim=-1) @ v
        return self.c_proj(merge_heads(a)), (k, v)


class GPT2MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["n_embd"]
        inner = cfg["n_inner"] or 4 * d
        self.c_fc = Conv1D(inner, d)
        self.c_proj = Conv1D(d, inner)

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, eps = cfg["n_embd"], cfg["layer_norm_epsilon"]
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x, past=None, attention_mask=None):
        a, present = self.attn(self.ln_1(x), past, attention_mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT2Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["n_embd"])
        self.wpe = nn.Embedding(cfg["n_positions"], cfg["n_embd"])
        self.h = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(cfg["n_embd"], eps=cfg["layer_norm_epsilon"])

    def forward(self, ids, past=None, attention_mask=None):
        start = 0 if past is None else past[0][0].size(-2)
        pos = torch.arange(start, start + ids.size(1))
        x = self.wte(ids) + self.wpe(pos)[None]
        presents = []
        for i, block in enumerate(self.h):
            x, p = block(x, None if past is None else past[i], attention_mask)
            presents.append(p)
        return self.ln_f(x), presents


class GPT2LMHeadModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.transformer = GPT2Model(cfg)

    def forward(self, ids, past=None, attention_mask=None):
        h, presents = self.transformer(ids, past, attention_mask)
        return h @ self.transformer.wte.weight.t(), h, presents  # lm_head tied to wte


def gpt2_config(vocab, n_embd, n_layer, n_head, n_positions):
    """config.json as transformers 4.x writes it for GPT2LMHeadModel."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": vocab - 1,
        "embd_pdrop": 0.1,
        "eos_token_id": vocab - 1,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_inner": None,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "transformers_version": "4.40.0",
        "use_cache": True,
        "vocab_size": vocab,
    }


# ---------------------------------------------------------------------------------------------
# BERT, as transformers' modeling_bert.py


class BertEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], d, padding_idx=cfg["pad_token_id"])
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def forward(self, ids, token_types):
        pos = torch.arange(ids.size(1))
        return self.LayerNorm(self.word_embeddings(ids) + self.token_type_embeddings(token_types) +
                              self.position_embeddings(pos)[None])


class BertSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.n_head = cfg["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, ext_mask):
        q, k, v = (split_heads(f(x), self.n_head) for f in (self.query, self.key, self.value))
        w = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)) + ext_mask
        return merge_heads(F.softmax(w, dim=-1) @ v)


class BertSelfOutput(nn.Module):
    """attention.output and output: dense, then LayerNorm of (it + the residual)."""

    def __init__(self, d_in, d, eps):
        super().__init__()
        self.dense = nn.Linear(d_in, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg["hidden_size"], cfg["hidden_size"], cfg["layer_norm_eps"])

    def forward(self, x, ext_mask):
        return self.output(self.self(x, ext_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])

    def forward(self, x):
        return F.gelu(self.dense(x))  # erf GELU ("gelu")


class BertLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg["intermediate_size"], cfg["hidden_size"],
                                     cfg["layer_norm_eps"])

    def forward(self, x, ext_mask):
        a = self.attention(x, ext_mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class BertPooler(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["hidden_size"])

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    def __init__(self, cfg, pooler=True):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg) if pooler else None

    def forward(self, ids, token_types, attention_mask):
        ext = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        h = self.embeddings(ids, token_types)
        for layer in self.encoder.layer:
            h = layer(h, ext)
        return h, (self.pooler(h) if self.pooler is not None else None)


def bert_config(vocab, hidden, layers, heads, intermediate, max_pos, type_vocab):
    """config.json as transformers 4.x writes it for BertModel."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": max_pos,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.40.0",
        "type_vocab_size": type_vocab,
        "use_cache": True,
        "vocab_size": vocab,
    }


# ---------------------------------------------------------------------------------------------
# Files

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.uint8: "U8", torch.bool: "BOOL"}


def tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()  # little-endian on every machine this runs on


def write_safetensors(path, tensors, metadata=None):
    """name -> tensor (any dtype of ST_DTYPES, any rank), in the given order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    chunks, offset = [], 0
    for name, t in tensors.items():
        raw = tensor_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
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


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    dtypes = {v: k for k, v in ST_DTYPES.items()}
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dt = dtypes[e["dtype"]]
        raw = bytearray(data[b:end])
        if dt in (torch.float16, torch.bfloat16):
            t = torch.frombuffer(raw, dtype=torch.int16).view(dt)
        else:
            t = torch.frombuffer(raw, dtype=dt)
        out[name] = t.reshape(e["shape"]).float()
    return out


def write_model(out_dir, state, config, dtype=torch.float32, extra=None):
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.to(dtype) for k, v in state.items()}
    if extra:
        tensors.update(extra)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
    config = dict(config, torch_dtype={torch.float32: "float32", torch.float16: "float16",
                                       torch.bfloat16: "bfloat16"}[dtype])
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def randomize_(module):
    """Non-trivial values everywhere: LayerNorm weights 1 + noise, biases noise, weights N(0, s)."""
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif p.dim() == 1:
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.3 * torch.randn_like(p))


def f32(t):
    return t.detach().float()


# ---------------------------------------------------------------------------------------------
# Cases


def gpt2_fixtures(out):
    torch.manual_seed(19)
    cfg = gpt2_config(vocab=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    model = GPT2LMHeadModel(cfg).eval()
    randomize_(model)
    state = model.state_dict()
    write_model(os.path.join(out, "gpt2"), state, cfg)
    write_model(os.path.join(out, "gpt2_f16"), state, cfg, torch.float16)
    write_model(os.path.join(out, "gpt2_bf16"), state, cfg, torch.bfloat16)
    bare = {k[len("transformer."):]: v for k, v in state.items()}
    P = cfg["n_positions"]
    buffers = {}
    for i in range(cfg["n_layer"]):
        buffers["h.%d.attn.bias" % i] = torch.ones(P, P).tril().view(1, 1, P, P)
        buffers["h.%d.attn.masked_bias" % i] = torch.tensor(-1e4)
    write_model(os.path.join(out, "gpt2_noprefix"), bare, cfg, extra=buffers)

    # A right-padded batch: id 0 is padding only (the test makes it the pad id).
    B, T = 3, 7
    ids = torch.randint(1, cfg["vocab_size"], (B, T))
    lengths = [7, 4, 5]
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0
    with torch.no_grad():
        logits, hidden, _ = model(ids, attention_mask=mask)

        # KV cache: a prompt, then one token per step through the past keys and values.
        prompt = torch.randint(1, cfg["vocab_size"], (2, 5))
        steps = torch.randint(1, cfg["vocab_size"], (2, 3))
        kv_logits, _, past = model(prompt)
        rows = [kv_logits.reshape(-1, kv_logits.size(-1))]
        for s in range(steps.size(1)):
            step_logits, _, past = model(steps[:, s:s + 1], past)
            rows.append(step_logits.reshape(-1, step_logits.size(-1)))
        full = torch.cat([prompt, steps], dim=1)
        full_logits, _, _ = model(full)
        loss = F.cross_entropy(full_logits[:, :-1].reshape(-1, cfg["vocab_size"]),
                               full[:, 1:].reshape(-1))
    write_safetensors(os.path.join(out, "gpt2_reference.safetensors"), {
        "input.ids": ids.float(),
        "input.mask": mask,
        "expected.logits": f32(logits.reshape(B * T, -1)),
        "expected.hidden": f32(hidden.reshape(B * T, -1)),
        "kv.prompt": prompt.float(),
        "kv.steps": steps.float(),
        "kv.logits": torch.cat(rows, dim=0),
        "expected.loss": loss.reshape(1),
    })


def bert_fixtures(out):
    torch.manual_seed(20)
    cfg = bert_config(vocab=50, hidden=16, layers=2, heads=2, intermediate=32, max_pos=24,
                      type_vocab=2)
    model = BertModel(cfg, pooler=True).eval()
    randomize_(model)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[cfg["pad_token_id"]].zero_()
    state = {"bert." + k: v for k, v in model.state_dict().items()}
    extra = {"bert.embeddings.position_ids":
             torch.arange(cfg["max_position_embeddings"]).view(1, -1),
             "cls.predictions.bias": torch.zeros(cfg["vocab_size"])}
    write_model(os.path.join(out, "bert"), state, dict(cfg, architectures=["BertForMaskedLM"]),
                extra=extra)
    write_model(os.path.join(out, "bert_bf16"), state, dict(cfg, architectures=["BertForMaskedLM"]),
                torch.bfloat16, extra=extra)
    bare = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
    write_model(os.path.join(out, "bert_noprefix"), bare, cfg)

    B, T = 3, 8
    ids = torch.randint(1, cfg["vocab_size"], (B, T))
    token_types = torch.zeros(B, T, dtype=torch.long)
    lengths = [8, 5, 6]
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = cfg["pad_token_id"]
        token_types[b, n // 2:n] = 1  # a second segment
    with torch.no_grad():
        hidden, pooled = model(ids, token_types, mask)
    write_safetensors(os.path.join(out, "bert_reference.safetensors"), {
        "input.ids": ids.float(),
        "input.token_types": token_types.float(),
        "input.mask": mask,
        "expected.hidden": f32(hidden.reshape(B * T, -1)),
        "expected.pooled": f32(pooled),
    })


def tiny_gpt2(out_dir, seed):
    torch.manual_seed(seed)
    cfg = gpt2_config(vocab=50257, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # GPT-2's initialisation: N(0, 0.02), LayerNorms 1 and 0
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    write_model(out_dir, model.state_dict(), cfg)
    print("wrote %s/model.safetensors and config.json" % out_dir)


def check_gpt2(model_dir):
    """Loads an HF-layout GPT-2 into the modules above and prints its logits on a fixed prompt."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg.setdefault("n_inner", None)
    model = GPT2LMHeadModel(cfg).eval()
    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    tensors = {(k if k.startswith("transformer.") else "transformer." + k): v
               for k, v in tensors.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    model.load_state_dict(tensors, strict=True)
    ids = torch.arange(1, 6).view(1, -1) % cfg["vocab_size"]
    with torch.no_grad():
        logits, _, _ = model(ids)
    for row in logits[0]:
        print(" ".join("%.6g" % v for v in row[:8].tolist()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny-gpt2", metavar="DIR")
    ap.add_argument("--check-gpt2", metavar="DIR")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.tiny_gpt2:
        tiny_gpt2(args.tiny_gpt2, args.seed)
    elif args.check_gpt2:
        check_gpt2(args.check_gpt2)
    else:
        os.makedirs(OUT_DIR, exist_ok=True)
        gpt2_fixtures(OUT_DIR)
        bert_fixtures(OUT_DIR)
        print("wrote", os.path.normpath(OUT_DIR))


if __name__ == "__main__":
    main()
