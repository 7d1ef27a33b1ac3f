#!/usr/bin/python3
"""Times the eigenformer benchmarks and the same work in PyTorch, side by side.

Run with Debian's Python and python3-torch (1.13), from the repository root after building the
benchmarks (see bench/README.md):

    /usr/bin/python3 bench/compare_pytorch.py --threads 1
    /usr/bin/python3 bench/compare_pytorch.py --threads 2 --filter 'mha_forward/8/'

For each case it runs our Google Benchmark binary filtered to that case (--benchmark_format=json)
and then the PyTorch version in this process, so both sides see the same machine load, and prints
a markdown table: case, eigenformer ms, PyTorch ms, PyTorch / eigenformer (> 1: eigenformer is
faster), and the CPU cores other processes used meanwhile (anything well above 0 means the row was
disturbed: rerun it with --filter). Times are wall-clock medians over --repetitions runs of at least --min-time seconds each.

Threads: --threads N sets OMP_NUM_THREADS (our binaries and PyTorch's OpenMP), OPENBLAS_NUM_THREADS
and MKL_NUM_THREADS before anything starts, and torch.set_num_threads(N).

BLAS: Debian's python3-torch calls the system libblas.so.3 for its matrix products. With only
libblas3 (the netlib reference BLAS) installed that is about 10x slower than an optimised BLAS,
which would make the comparison meaningless. --torch-blas-dir DIR puts DIR first on
LD_LIBRARY_PATH for PyTorch (the script re-executes itself), e.g. the openblas-openmp folder of
Debian's libopenblas0-openmp; the default, 'auto', uses the first of
/usr/lib/x86_64-linux-gnu/openblas-openmp and .../openblas-pthread that exists, and the system BLAS
otherwise. Prefer the OpenMP build: PyTorch's own threads are OpenMP's, and at 2 threads the
pthread build's threads fought them (PyTorch's train step took 1097 ms against 577 ms). The table
header states which library PyTorch actually loaded.

What each side does per case:
  BM_mha_forward/B/T/D/H/causal
    eigenformer: Attention<float>::forward(x, B, mask, cache); the forward that training
      uses, which keeps Q, K, V, the (B*H*T, T) probabilities and the context in the cache.
    PyTorch: nn.MultiheadAttention(D, H, batch_first=True) in eval mode under
      torch.inference_mode(), need_weights=False; causal via a boolean attn_mask (triu). This is
      PyTorch's inference path (the fused "fast path" when there is no mask, i.e. causal = 0).
  BM_mha_forward_backward/B/T/D/H/causal
    eigenformer: forward, then backward(dy, cache) with a fixed random dy.
    PyTorch: train mode, y = mha(x, x, x, attn_mask, need_weights=False); (y * R).sum().backward()
      with a fixed random R (so dy = R) and x.requires_grad; .grad reset to None each iteration.
  BM_seq2seq_train_step
    Both: encoder-decoder with d_model 256, 4 heads, 3 + 3 post-LN layers, d_ff 1024, ReLU,
    vocabularies of 1000, dropout 0.1 (training mode), embeddings * sqrt(d_model) + sinusoidal
    positions, no final LayerNorm, untied output Linear; a batch of 32 random source and target
    sequences of 32 tokens; zero_grad, forward, mean cross-entropy (ignore_index = pad),
    backward, Adam step. PyTorch: nn.TransformerEncoder/Decoder of nn.Transformer*Layer
    (batch_first), key padding masks from the ids and a causal target mask, as ours makes.
  BM_gpt_train_step/i
    Both: a GPT-2-style decoder-only model (pre-norm, learned positions, GELU tanh, output tied
    to the token embedding, no dropout), AdamW (weight decay 0.1 on weight matrices, none on
    vectors and the embedding tables), mean cross-entropy over the next token of a random batch;
    i = 0: GPT-2 124M's shape (12 layers, width 768, 12 heads, vocabulary 50257, batch 4 x 64);
    i = 1: GPT mini (4 layers, width 256, 4 heads, vocabulary 8192, batch 8 x 128). PyTorch: a
    nanoGPT-style module (q|k|v in one Linear, as GPT-2 stores it).
  BM_greedy_decode/N
    Both: eval mode, one 32-token source, encode once, then N greedy steps; the output bias of EOS
    is -1e9 so that exactly N tokens are decoded. eigenformer's greedy_decode keeps past keys and
    values in a KV cache and runs the decoder on the one new token per step. nn.TransformerDecoder
    has no KV cache, so the PyTorch loop reruns the decoder over the whole prefix each step and
    projects only the last position (what a PyTorch 1.13 user writes); the ratio therefore
    measures the two libraries as a user gets them, not equal work.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import gbench  # beside this script

OPENBLAS_DIRS = ("/usr/lib/x86_64-linux-gnu/openblas-openmp",
                 "/usr/lib/x86_64-linux-gnu/openblas-pthread")
REEXEC_MARK = "EIGENFORMER_COMPARE_REEXEC"

ATTENTION_SHAPES = [  # B, T, D, H, causal
    (8, 128, 512, 8, 0),
    (8, 128, 512, 8, 1),
    (32, 32, 256, 4, 0),
    (1, 1024, 512, 8, 1),
    (1, 4096, 512, 8, 1),
]


def all_cases():
    """(name, binary key) of every case, in table order."""
    cases = []
    for kind in ("BM_mha_forward", "BM_mha_forward_backward"):
        for shape in ATTENTION_SHAPES:
            cases.append((kind + "/" + "/".join(str(v) for v in shape), "attention"))
    cases.append(("BM_seq2seq_train_step", "model"))
    cases.append(("BM_greedy_decode/64", "model"))
    cases.append(("BM_greedy_decode/256", "model"))
    cases.append(("BM_gpt_train_step/0", "model"))
    cases.append(("BM_gpt_train_step/1", "model"))
    return cases


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="threads for both sides (default 1)")
    p.add_argument("--attention-bin", default="build/bench/bench_attention",
                   help="our attention benchmark binary (default build/bench/bench_attention)")
    p.add_argument("--model-bin", default="build/bench/bench_model",
                   help="our model benchmark binary (default build/bench/bench_model)")
    p.add_argument("--filter", default="", help="regular expression (re.search) on case names")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="seconds each repetition runs at least (default 0.5)")
    p.add_argument("--repetitions", type=int, default=3,
                   help="repetitions per case and side; the median is reported (default 3)")
    p.add_argument("--torch-blas-dir", default="auto",
                   help="folder with the libblas.so.3 PyTorch should load, 'system' or 'auto' "
                        "(default: the first of %s present)" % ", ".join(OPENBLAS_DIRS))
    p.add_argument("--skip-torch", action="store_true", help="time eigenformer only")
    p.add_argument("--json-out", default="", help="also write the results to this JSON file")
    p.add_argument("--list", action="store_true", help="list the case names and exit")
    return p.parse_args()


def setup_environment(args):
    """Thread variables and the BLAS path must be set before torch (and its OpenMP) load."""
    n = str(args.threads)
    changed = False
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var) != n:
            os.environ[var] = n
            changed = True
    blas_dir = args.torch_blas_dir
    if blas_dir == "auto":
        blas_dir = next((d for d in OPENBLAS_DIRS if os.path.isdir(d)), "system")
    if blas_dir != "system":
        if not os.path.exists(os.path.join(blas_dir, "libblas.so.3")):
            sys.exit("compare_pytorch.py: no libblas.so.3 in --torch-blas-dir %s" % blas_dir)
        paths = os.environ.get("LD_LIBRARY_PATH", "").split(":")
        if paths[0] != blas_dir:
            os.environ["LD_LIBRARY_PATH"] = ":".join([blas_dir] + [x for x in paths if x])
            changed = True
    # The dynamic loader reads LD_LIBRARY_PATH only at start-up, and OpenMP its variables when it
    # loads: re-execute once so that both apply.
    if changed and os.environ.get(REEXEC_MARK) != "1":
        os.environ[REEXEC_MARK] = "1"
        os.execv(sys.executable, [sys.executable] + sys.argv)


def loaded_blas():
    """The BLAS shared library this process has mapped (after torch did a matrix product)."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if re.search(r"lib(open)?blas|libmkl|libblis", os.path.basename(path)):
                found.add(os.path.realpath(path))
    return ", ".join(sorted(found)) or "none found"


def openblas_core():
    """The kernel family OpenBLAS chose (openblas_get_corename), or '' when it is not OpenBLAS.
    OPENBLAS_CORETYPE forces one: some machines set it to an older family (Haswell, AVX2) that
    runs well below what the CPU can do (on an AVX-512 core, 68 against 113 GFLOP/s)."""
    import ctypes
    for path in loaded_blas().split(", "):  # a shim libblas.so.3 or OpenBLAS itself
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            return lib.openblas_get_corename().decode()
        except (OSError, AttributeError):
            continue
    return ""


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy (not idle or waiting for I/O) since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    """CPU seconds of this process and its finished children (our benchmark binaries)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------------------------------
# eigenformer side


def run_ours(binary, name, args):
    """Median wall time in ms of one case of our benchmark binary, and its context."""
    if not os.path.exists(binary):
        sys.exit("compare_pytorch.py: %s not found; build it or pass --attention-bin/--model-bin"
                 % binary)
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    env.pop(REEXEC_MARK, None)
    cmd = [binary, "--benchmark_filter=^%s$" % re.escape(name).replace("\\/", "/"),
           "--benchmark_format=json", "--benchmark_min_time=%g" % args.min_time,
           "--benchmark_repetitions=%d" % args.repetitions]
    if args.repetitions > 1:
        cmd.append("--benchmark_report_aggregates_only=true")
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    report = gbench.parse_report(out, "compare_pytorch.py")
    for b in gbench.medians(report, args.repetitions, "compare_pytorch.py").values():
        return b["ms"], report["context"], b
    sys.exit("compare_pytorch.py: %s produced no result (is the name right?)" % name)


# ---------------------------------------------------------------------------------------------
# PyTorch side


def time_torch(fn, args):
    """Median over repetitions of the mean wall time of fn() in ms; one warm-up call first."""
    fn()
    per_call = []
    for _ in range(args.repetitions):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= args.min_time:
                break
        per_call.append(elapsed / calls)
    return statistics.median(per_call) * 1e3


def torch_attention_case(torch, name):
    kind, *dims = name.split("/")
    B, T, D, H, causal = (int(v) for v in dims)
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(D, H, batch_first=True)
    x = torch.rand(B, T, D) * 2 - 1
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1) if causal else None
    if kind == "BM_mha_forward":
        mha.eval()

        def forward():
            with torch.inference_mode():
                return mha(x, x, x, attn_mask=mask, need_weights=False)[0]
        return forward
    mha.train()
    x.requires_grad_(True)
    R = torch.rand(B, T, D) * 2 - 1

    def forward_backward():
        mha.zero_grad(set_to_none=True)
        x.grad = None
        y = mha(x, x, x, attn_mask=mask, need_weights=False)[0]
        (y * R).sum().backward()
    return forward_backward


PAD, BOS, EOS, FIRST_WORD = 0, 1, 2, 3
VOCAB, D_MODEL, N_HEADS, N_LAYERS, D_FF, DROPOUT, MAX_LEN = 1000, 256, 4, 3, 1024, 0.1, 512
BATCH, SRC_LEN, TGT_LEN = 32, 32, 32


def make_seq2seq(torch):
    nn = torch.nn
    import math

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_emb = nn.Embedding(VOCAB, D_MODEL, padding_idx=PAD)
            self.tgt_emb = nn.Embedding(VOCAB, D_MODEL, padding_idx=PAD)
            pos = torch.arange(MAX_LEN, dtype=torch.float32).unsqueeze(1)
            div = torch.exp(torch.arange(0, D_MODEL, 2, dtype=torch.float32) *
                            (-math.log(10000.0) / D_MODEL))
            pe = torch.zeros(MAX_LEN, D_MODEL)
            pe[:, 0::2] = torch.sin(pos * div)
            pe[:, 1::2] = torch.cos(pos * div)
            self.register_buffer("pe", pe)
            self.drop = nn.Dropout(DROPOUT)
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(D_MODEL, N_HEADS, D_FF, DROPOUT, batch_first=True),
                N_LAYERS)
            self.decoder = nn.TransformerDecoder(
                nn.TransformerDecoderLayer(D_MODEL, N_HEADS, D_FF, DROPOUT, batch_first=True),
                N_LAYERS)
            self.out = nn.Linear(D_MODEL, VOCAB)
            self.scale = math.sqrt(D_MODEL)

        def embed(self, emb, ids):
            return self.drop(emb(ids) * self.scale + self.pe[: ids.shape[1]])

        def encode(self, src):
            return self.encoder(self.embed(self.src_emb, src), src_key_padding_mask=src == PAD)

        def decode(self, tgt_in, src, memory):
            T = tgt_in.shape[1]
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            return self.decoder(self.embed(self.tgt_emb, tgt_in), memory, tgt_mask=causal,
                                tgt_key_padding_mask=tgt_in == PAD,
                                memory_key_padding_mask=src == PAD)

        def forward(self, src, tgt_in):
            return self.out(self.decode(tgt_in, src, self.encode(src)))

    torch.manual_seed(0)
    return Seq2Seq()


def torch_train_step_case(torch):
    model = make_seq2seq(torch)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(FIRST_WORD, VOCAB, (BATCH, SRC_LEN), generator=gen)
    tgt = torch.randint(FIRST_WORD, VOCAB, (BATCH, TGT_LEN), generator=gen)
    tgt_in = torch.cat([torch.full((BATCH, 1), BOS), tgt[:, :-1]], dim=1)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=PAD)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(src, tgt_in)
        loss = loss_fn(logits.reshape(-1, VOCAB), tgt.reshape(-1))
        loss.backward()
        opt.step()
    return step


def torch_greedy_case(torch, n):
    model = make_seq2seq(torch)
    model.eval()
    with torch.no_grad():
        model.out.bias[EOS] = -1e9
    gen = torch.Generator().manual_seed(2)
    src = torch.randint(FIRST_WORD, VOCAB, (1, SRC_LEN), generator=gen)

    def decode():
        with torch.inference_mode():
            memory = model.encode(src)
            prefix = torch.full((1, 1), BOS, dtype=torch.long)
            for _ in range(n):
                h = model.decode(prefix, src, memory)
                nxt = model.out(h[:, -1]).argmax(-1, keepdim=True)  # (1, 1)
                prefix = torch.cat([prefix, nxt], dim=1)
                if int(nxt) == EOS:
                    break
        if prefix.shape[1] != n + 1:
            raise RuntimeError("decoded %d tokens, expected %d" % (prefix.shape[1] - 1, n))
    return decode


# BM_gpt_train_step/<i>: (layers, width, heads, vocabulary, batch, tokens), as in bench_model.cpp.
GPT_SHAPES = [(12, 768, 12, 50257, 4, 64), (4, 256, 4, 8192, 8, 128)]


def make_gpt(torch, layers, width, heads, vocab, max_len=1024):
    """nanoGPT's model (pre-norm blocks, learned positions, GELU tanh, output tied to the token
    embedding, no dropout): what BM_gpt_train_step builds in eigenformer."""
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width)
            self.c_attn = nn.Linear(width, 3 * width)
            self.c_proj = nn.Linear(width, width)
            self.ln_2 = nn.LayerNorm(width)
            self.c_fc = nn.Linear(width, 4 * width)
            self.mlp_proj = nn.Linear(4 * width, width)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(width, dim=2)
            q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True) \
                if hasattr(F, "scaled_dot_product_attention") else self.attend(q, k, v, T)
            x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

        @staticmethod
        def attend(q, k, v, T):  # PyTorch 1.13 has no scaled_dot_product_attention
            att = (q @ k.transpose(-2, -1)) / (q.shape[-1] ** 0.5)
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            return F.softmax(att.masked_fill(mask, float("-inf")), dim=-1) @ v

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, width)
            self.wpe = nn.Embedding(max_len, width)
            self.h = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(width)

        def forward(self, ids):
            T = ids.shape[1]
            x = self.wte(ids) + self.wpe(torch.arange(T))
            for block in self.h:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.t()  # tied output

    torch.manual_seed(0)
    return GPT()


def torch_gpt_case(torch, index):
    layers, width, heads, vocab, batch, tokens = GPT_SHAPES[index]
    model = make_gpt(torch, layers, width, heads, vocab)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n
             and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n
                                                               and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=3e-4)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(FIRST_WORD, vocab, (batch, tokens + 1), generator=gen)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
    return step


def torch_case(torch, name):
    if name.startswith("BM_mha_"):
        return torch_attention_case(torch, name)
    if name == "BM_seq2seq_train_step":
        return torch_train_step_case(torch)
    if name.startswith("BM_greedy_decode/"):
        return torch_greedy_case(torch, int(name.split("/")[1]))
    if name.startswith("BM_gpt_train_step/"):
        return torch_gpt_case(torch, int(name.split("/")[1]))
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------


def main():
    args = parse_args()
    cases = [(n, b) for n, b in all_cases() if re.search(args.filter, n)]
    if args.list:
        print("\n".join(n for n, _ in cases))
        return
    if not cases:
        sys.exit("compare_pytorch.py: --filter %r selects no case" % args.filter)
    setup_environment(args)

    torch = None
    if not args.skip_torch:
        import warnings
        try:
            import torch as torch_module
        except ImportError:
            sys.exit("compare_pytorch.py: PyTorch is not installed for %s: apt-get install "
                     "python3-torch (Debian's, 1.13), or pass --skip-torch to time eigenformer "
                     "alone" % sys.executable)
        torch = torch_module
        # nn.TransformerEncoder's eval fast path converts padded batches to nested tensors and
        # warns that their API is a prototype: noise on stderr, not about the timing.
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")
        torch.set_num_threads(args.threads)
        torch.ones(64, 64) @ torch.ones(64, 64)  # loads the BLAS, for loaded_blas()

    binaries = {"attention": args.attention_bin, "model": args.model_bin}
    load_before = load_average()
    started = time.time()
    rows, context = [], {}
    for name, binary in cases:
        # Other processes' CPU use while the case ran, in cores: the busy CPU time of the machine
        # less our own, over the wall time. Near 0 means the numbers were measured undisturbed.
        busy0, own0, wall0 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        ours, context, _ = run_ours(binaries[binary], name, args)
        theirs = time_torch(torch_case(torch, name), args) if torch else float("nan")
        wall = time.perf_counter() - wall0
        others = max(0.0, (busy_cpu_seconds() - busy0) - (own_cpu_seconds() - own0)) / wall
        rows.append({"case": name, "eigenformer_ms": ours, "pytorch_ms": theirs,
                     "other_cores": others})
        print("%-40s eigenformer %10.2f ms   PyTorch %10.2f ms   other processes %.2f cores"
              % (name, ours, theirs, others), file=sys.stderr, flush=True)

    print("threads: %d (OMP_NUM_THREADS=%s, torch.get_num_threads()=%s); eigenformer: Eigen %s, "
          "SIMD %s, GEMM %s; load average before/after: %s / %s; %.0f s"
          % (args.threads, os.environ.get("OMP_NUM_THREADS"),
             torch.get_num_threads() if torch else "-", context.get("eigen_version", "?"),
             context.get("eigen_simd", "?"), context.get("eigen_gemm", "?"), load_before,
             load_average(),
             time.time() - started))
    if torch:
        core, forced = openblas_core(), os.environ.get("OPENBLAS_CORETYPE")
        if core:
            core = " (OpenBLAS core %s%s)" % (
                core, ", forced by OPENBLAS_CORETYPE=" + forced if forced else "")
        print("PyTorch %s, BLAS: %s%s" % (torch.__version__, loaded_blas(), core))
    print("times: median of %d repetitions of >= %g s each, wall clock\n"
          % (args.repetitions, args.min_time))
    print("| case | eigenformer ms | PyTorch ms | PyTorch / eigenformer | other load |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| %s | %.2f | %.2f | %.2f | %.2f |"
              % (r["case"], r["eigenformer_ms"], r["pytorch_ms"],
                 r["pytorch_ms"] / r["eigenformer_ms"], r["other_cores"]))
    print("\nother load: CPU cores used by other processes while the case ran (0 = undisturbed)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"threads": args.threads, "context": context,
                       "torch_blas": loaded_blas() if torch else None, "results": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
