"""PyTorch baseline for `adabits bench`: the same three workloads on the same device.

Written from the specification (docs/method.md; not from the authors' code). Run: python3 fake_quant.py [--bits 4]
[--batch 32] [--iters 20] [--device cuda] [--threads N]. Prints JSON shaped like `adabits bench --json`.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def q_original(u, bits):
    a = 2**bits - 1
    return torch.round(u * a) / a


def q_modified(u, bits):
    a = 2**bits
    return torch.clamp(torch.floor(u * a), max=a - 1) / a


class Ste(torch.autograd.Function):
    """`q(u)` forward, identity backward: one autograd node, as the official `q_k`."""

    @staticmethod
    def forward(ctx, u, q, bits):
        return q(u, bits)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def ste(u, q, bits):
    return Ste.apply(u, q, bits)


def pact(x, alpha, bits):
    a = alpha.abs()
    c = torch.relu(x)
    c = torch.where(c < a, c, a)
    v = c / a
    return a * ste(v, q_original, bits)


def quantize_weight(w, bits, fan_out, rescale=True):
    t = torch.tanh(w)
    m = t.abs().max()
    u = (t / m + 1) / 2
    w_hat = 2 * ste(u, q_modified, bits) - 1
    if not rescale:
        return w_hat
    s = (1 / math.sqrt(fan_out)) / w_hat.detach().std()
    return w_hat * s


def time_ms(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    b, n = args.bits, args.batch
    out = []

    x = torch.randn(n, 64, 32, 32, device=dev) * 4
    alpha = torch.full((1,), 8.0, device=dev)
    ms = time_ms(lambda: pact(x, alpha, b), dev, 3, args.iters)
    out.append({"name": f"pact forward [{n},64,32,32] @{b}b", "ms": ms,
                "throughput": x.numel() * 8 / (ms * 1e-3) / 1e9, "unit": "GB/s"})

    xg = (torch.randn(n, 64, 32, 32, device=dev) * 4).requires_grad_()
    alpha_g = torch.full((1,), 8.0, device=dev, requires_grad=True)
    upstream = torch.randn(n, 64, 32, 32, device=dev)

    def pact_step():
        xg.grad = None
        alpha_g.grad = None
        (pact(xg, alpha_g, b) * upstream).sum().backward()

    ms = time_ms(pact_step, dev, 2, args.iters)
    out.append({"name": f"pact fwd+bwd [{n},64,32,32] @{b}b", "ms": ms,
                "throughput": xg.numel() * 20 / (ms * 1e-3) / 1e9, "unit": "GB/s"})

    w = torch.randn(256, 256, 3, 3, device=dev) * 0.05
    ms = time_ms(lambda: quantize_weight(w, b, 256 * 9), dev, 3, args.iters)
    out.append({"name": f"weight quant [256,256,3,3] @{b}b", "ms": ms,
                "throughput": w.numel() * 8 / (ms * 1e-3) / 1e9, "unit": "GB/s"})

    x = torch.randn(n, 16, 32, 32, device=dev) * 2
    w = (torch.randn(16, 16, 3, 3, device=dev) * 0.1).requires_grad_()
    alpha = torch.full((1,), 8.0, device=dev, requires_grad=True)

    def step():
        xq = pact(x, alpha, b)
        y = F.conv2d(xq, quantize_weight(w, b, 16 * 9, rescale=False), padding=1)
        w.grad = None
        alpha.grad = None
        y.sum().backward()

    ms = time_ms(step, dev, 2, args.iters)
    out.append({"name": f"qconv3x3 16→16 32x32 fwd+bwd, batch {n} @{b}b", "ms": ms,
                "throughput": n / (ms * 1e-3), "unit": "img/s"})
    print(json.dumps({"device": f"pytorch {torch.__version__} {args.device}", "results": out}, indent=1))


if __name__ == "__main__":
    main()
