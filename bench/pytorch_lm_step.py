#!/usr/bin/env python3
"""PyTorch side of the training-step benchmarks (issue 3 on the CPU, issue 5 on CUDA): the
Transformer LM of ../shared/docs/experiment.md with M0 or M1 attention, timed for one training
step (forward, backward, clipping, Adam update) at the protocol's sizes.

Usage:
    python3 bench/pytorch_lm_step.py [--mech m1|m0] [--layers 1] [--batch 20] [--bptt 35]
                                     [--threads 2] [--steps 20] [--warmup 3] [--json]
                                     [--device cpu|cuda] [--compile] [--tf32]

Prints tokens per second (batch * bptt / median step time) for forward+backward alone and for
the whole step, and the peak memory: resident memory of the process on the CPU, the CUDA
allocator's peak (torch.cuda.max_memory_allocated) on a GPU. On CUDA every timed region ends
with torch.cuda.synchronize(). `--compile` wraps the model in torch.compile (default mode);
`--tf32` lets matmuls use TF32 (fp32 otherwise). Needs PyTorch; nothing else.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, d, h, mech):
        super().__init__()
        self.h, self.mech = h, mech
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        dk = d // self.h
        split = lambda z: z.view(b, t, self.h, dk).transpose(1, 2)  # [b, h, t, dk]
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.mech == "m1":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            q, k = F.elu(q) + 1, F.elu(k) + 1
            kv = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # [b, h, t, dk, dv]
            z = torch.cumsum(k, dim=2)
            num = torch.einsum("bhtd,bhtde->bhte", q, kv)
            den = (q * z).sum(-1, keepdim=True) + 1e-6
            y = num / den
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, h, dff, p, mech):
        super().__init__()
        self.attn = Attention(d, h, mech)
        self.ff1, self.ff2 = nn.Linear(d, dff), nn.Linear(dff, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        x = self.ln1(x + self.drop(self.attn(x)))
        return self.ln2(x + self.drop(self.ff2(self.drop(F.relu(self.ff1(x))))))


class LM(nn.Module):
    def __init__(self, vocab, d, h, dff, layers, p, mech, bptt):
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, h, dff, p, mech) for _ in range(layers))
        self.out = nn.Linear(d, vocab)
        self.drop = nn.Dropout(p)
        pos = torch.arange(bptt).unsqueeze(1)
        i = torch.arange(0, d, 2)
        pe = torch.zeros(bptt, d)
        pe[:, 0::2] = torch.sin(pos / 10000 ** (i / d))
        pe[:, 1::2] = torch.cos(pos / 10000 ** (i / d))
        self.register_buffer("pe", pe)

    def forward(self, ids):
        x = self.drop(self.embed(ids) * math.sqrt(self.d) + self.pe[: ids.shape[1]])
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mech", default="m1", choices=["m0", "m1"])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = a.device == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    model = LM(a.vocab, a.d_model, a.heads, a.d_ff, a.layers, 0.1, a.mech, a.bptt).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    run = torch.compile(model) if a.compile else model
    ids = torch.randint(0, a.vocab, (a.batch, a.bptt), device=dev)
    targets = torch.randint(0, a.vocab, (a.batch, a.bptt), device=dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fb, full = [], []
    for step in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(run(ids).reshape(-1, a.vocab), targets.reshape(-1))
        loss.backward()
        sync()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        t2 = time.perf_counter()
        if step >= a.warmup:
            fb.append(t1 - t0)
            full.append(t2 - t0)
    tokens = a.batch * a.bptt
    res = {
        "torch": torch.__version__,
        "mech": a.mech,
        "layers": a.layers,
        "threads": a.threads,
        "params": sum(p.numel() for p in model.parameters()),
        "fwd_bwd_tokens_per_s": tokens / statistics.median(fb),
        "step_tokens_per_s": tokens / statistics.median(full),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "compiled": a.compile,
        "tf32": a.tf32,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    if a.json:
        print(json.dumps(res))
    else:
        how = ("torch.compile" if a.compile else "eager") + (", TF32" if a.tf32 else "")
        print(f"PyTorch {res['torch']} {a.mech} {a.layers} layer(s), {res['device']}, {how}, {a.threads} threads, {res['params']:,} parameters")
        print(f"  forward+backward: {res['fwd_bwd_tokens_per_s']:8.0f} tokens/s")
        print(f"  whole step (+clip, Adam): {res['step_tokens_per_s']:8.0f} tokens/s")
        print(f"  peak RSS: {res['peak_rss_mib']:.0f} MiB")
        if cuda:
            print(f"  peak GPU memory (allocator): {res['peak_gpu_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
