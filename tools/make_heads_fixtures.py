#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures of the task heads (model/heads.hpp), which
tests/test_heads.cpp compares against.

    /usr/bin/python3 tools/make_heads_fixtures.py [output dir]   (default tests/fixtures/pytorch)

Needs PyTorch (written with 1.13, float32 on CPU). The heads are Hugging Face BERT's, written out
in PyTorch (no transformers package): BertPooler + classifier (BertForSequenceClassification,
dropout 0) and BertLMPredictionHead (transform: dense, exact GELU, LayerNorm; decoder tied to the
word embeddings or not; bias). Mean pooling, which BERT lacks, is the mean over unpadded tokens.
Each case runs the head on fixed random hidden states h (B*T, d) and writes, as
tools/make_fixtures.py does: the weights in eigenformer's names, input.h (and input.pad, 1 =
padding), R, expected.y and grad.<name> of loss = sum(y * R) for every parameter and for h.
The output is deterministic.
"""
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_pytorch import write_safetensors  # noqa: E402
from make_fixtures import OUT_DIR, randomize_, save_case  # noqa: E402

B, T, D, V, C = 2, 4, 16, 11, 3
PAD = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)


class Classifier(nn.Module):
    def __init__(self, pooling, pooler):
        super().__init__()
        self.pooling = pooling
        self.pooler = nn.ModuleDict({"dense": nn.Linear(D, D)}) if pooler else None
        self.classifier = nn.Linear(D, C)

    def forward(self, h, pad):
        h = h.view(B, T, D)
        if self.pooling == "first":
            x = h[:, 0]
        else:
            keep = (~pad).to(h.dtype).unsqueeze(-1)
            x = (h * keep).sum(1) / keep.sum(1)
        if self.pooler is not None:
            x = torch.tanh(self.pooler["dense"](x))
        return self.classifier(x)


class MaskedLMHead(nn.Module):
    def __init__(self, tied):
        super().__init__()
        self.transform = nn.ModuleDict({"dense": nn.Linear(D, D),
                                        "LayerNorm": nn.LayerNorm(D, eps=1e-12)})
        self.embedding = nn.Embedding(V, D) if tied else None
        self.decoder = None if tied else nn.Linear(D, V, bias=False)
        self.bias = nn.Parameter(torch.zeros(V))

    def forward(self, h):
        x = self.transform["LayerNorm"](F.gelu(self.transform["dense"](h)))
        w = self.embedding.weight if self.embedding is not None else self.decoder.weight
        return x @ w.t() + self.bias


def run(out_dir, case, module, call, inputs, meta):
    h = inputs["h"].requires_grad_(True)
    weights = {k: v.detach().clone() for k, v in module.named_parameters()}
    y = call(module, inputs)
    R = torch.randn_like(y)
    (y * R).sum().backward()
    grads = {k: v.grad for k, v in module.named_parameters()}
    grads["h"] = h.grad
    save_case(out_dir, case, weights, inputs, R, {"y": y}, grads, meta,
              generator="tools/make_heads_fixtures.py")


def classifier_case(out_dir, case, seed, pooling, pooler):
    torch.manual_seed(seed)
    m = Classifier(pooling, pooler)
    randomize_(m)
    inputs = {"h": torch.randn(B * T, D), "pad": PAD.float()}
    run(out_dir, case, m, lambda m, i: m(i["h"], i["pad"] != 0), inputs,
        {"n_classes": C, "pooling": pooling, "pooler": "true" if pooler else "false"})


def mlm_case(out_dir, case, seed, tied):
    torch.manual_seed(seed)
    m = MaskedLMHead(tied)
    randomize_(m)
    inputs = {"h": torch.randn(B * T, D)}
    run(out_dir, case, m, lambda m, i: m(i["h"]), inputs,
        {"vocab": V, "tied": "true" if tied else "false", "eps": 1e-12, "activation": "gelu"})


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else OUT_DIR
    os.makedirs(out_dir, exist_ok=True)
    classifier_case(out_dir, "heads_classifier_first", 41, "first", True)
    classifier_case(out_dir, "heads_classifier_mean", 42, "mean", False)
    mlm_case(out_dir, "heads_mlm_tied", 43, True)
    mlm_case(out_dir, "heads_mlm_untied", 44, False)


if __name__ == "__main__":
    main()
