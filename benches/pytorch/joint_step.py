"""PyTorch re-creation of the official joint training step, for side-by-side benchmarks.

Written from the specification (docs/method.md §2-§8.3), not from the authors' code. It builds the CIFAR ResNet-20 of
§8.3 with the official defaults (weight scheme `modified`, activation scheme `original`, PACT with
one clipping level per bit-width, switchable BatchNorm, no conv rescale, the classifier rescaled
with SAT's constant, the stem weight-only at the top bit-width) and times what `adabits bench
--model resnet20` times:

- one joint training step over the bit-width list: zero the gradients, then for every bit-width a
  forward pass, the mean cross-entropy and `loss.backward()`, then one SGD step (momentum 0.9,
  Nesterov, weight decay 4e-5 on conv and linear weights only, §7);
- an evaluation forward pass at each bit-width (eval mode, no autograd).

It is as fast as plain eager PyTorch allows with the official step's work: the unit quantizer is
one autograd function with an identity backward (as the official `q_k`), nothing is cached
between bit-widths. Run: python3 joint_step.py [--batch 128] [--iters 5] [--threads 2]
[--bits 8,6,5,4] [--width 1] [--input 32] [--device cpu]. Prints JSON shaped like
`adabits bench --json`.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class UnitQuant(torch.autograd.Function):
    """Q_b(u) with the straight-through gradient (docs/method.md §2)."""

    @staticmethod
    def forward(ctx, u, bits, scheme):
        if scheme == "original":
            a = 2**bits - 1
            return torch.round(u * a) / a
        a = 2**bits
        return torch.clamp(torch.floor(u * a), max=a - 1) / a

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def quantize_weight(w, bitw, rescale, fan_out):
    """tanh normalisation, Q_b and SAT's constant rescale (docs/method.md §3); bitw < 32."""
    t = torch.tanh(w)
    m = t.abs().max()
    u = (t / m + 1) / 2
    w_hat = 2 * UnitQuant.apply(u, bitw, "modified") - 1
    if rescale:
        s = (1 / math.sqrt(fan_out)) / w_hat.detach().std()
        return w_hat * s
    return w_hat


def pact(x, alpha_param, bita):
    """Single-sided PACT with the original scheme (docs/method.md §4)."""
    a = alpha_param.abs()
    c = torch.relu(x)
    c = torch.where(c < a, c, a)
    return a * UnitQuant.apply(c / a, bita, "original")


class Policy:
    def __init__(self, bitw_min=None, bita_min=None, weight_only=False):
        self.bitw_min, self.bita_min, self.weight_only = bitw_min, bita_min, weight_only

    def resolve(self, b):
        bitw, bita = b, b
        if self.bitw_min is not None:
            bitw = max(bitw, self.bitw_min)
        if self.bita_min is not None:
            bita = max(bita, self.bita_min)
        if self.weight_only:
            bita = 32
        return bitw, bita


class QConv2d(nn.Conv2d):
    def __init__(self, c_in, c_out, k, stride, padding, bits_list, policy):
        super().__init__(c_in, c_out, k, stride, padding, bias=False)
        self.bits_list, self.policy, self.bits = bits_list, policy, bits_list[-1]
        self.alpha = nn.Parameter(torch.ones(len(bits_list)) * 8.0)
        n = k * k * c_out
        nn.init.normal_(self.weight, 0, math.sqrt(2.0 / n))

    def forward(self, x):
        bitw, bita = self.policy.resolve(self.bits)
        if bita < 32:
            idx = self.bits_list.index(bita) if bita in self.bits_list else 0
            x = pact(x, self.alpha[idx], bita)
        if bitw < 32:
            w = quantize_weight(self.weight, bitw, False, 0)
        else:
            t = torch.tanh(self.weight)
            w = t / t.abs().max()
        return F.conv2d(x, w, None, self.stride, self.padding)


class QLinear(nn.Linear):
    def __init__(self, d_in, d_out, bits_list, policy):
        super().__init__(d_in, d_out, bias=True)
        self.bits_list, self.policy, self.bits = bits_list, policy, bits_list[-1]
        self.alpha = nn.Parameter(torch.ones(len(bits_list)) * 10.0)
        nn.init.normal_(self.weight, 0, 0.01)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        bitw, bita = self.policy.resolve(self.bits)
        if bita < 32:
            idx = self.bits_list.index(bita) if bita in self.bits_list else 0
            x = pact(x, self.alpha[idx], bita)
        t = torch.tanh(self.weight)
        m = t.abs().max()
        u = (t / m + 1) / 2
        w_hat = 2 * UnitQuant.apply(u, bitw, "modified") - 1
        s = (1 / math.sqrt(self.out_features)) / w_hat.detach().std()
        if self.training:
            return F.linear(x, w_hat * s, self.bias)
        return F.linear(x, w_hat, self.bias / s)


class SwitchBN2d(nn.Module):
    def __init__(self, c, bits_list):
        super().__init__()
        self.bits_list, self.bits = bits_list, bits_list[-1]
        self.bn = nn.ModuleList([nn.BatchNorm2d(c) for _ in bits_list])

    def forward(self, x):
        idx = self.bits_list.index(self.bits) if self.bits in self.bits_list else 0
        return self.bn[idx](x)


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, bits_list):
        super().__init__()
        body = Policy()
        self.conv1 = QConv2d(c_in, c_out, 3, stride, 1, bits_list, body)
        self.bn1 = SwitchBN2d(c_out, bits_list)
        self.conv2 = QConv2d(c_out, c_out, 3, 1, 1, bits_list, body)
        self.bn2 = SwitchBN2d(c_out, bits_list)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                QConv2d(c_in, c_out, 1, stride, 0, bits_list, body), SwitchBN2d(c_out, bits_list)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + skip)


class CifarResNet(nn.Module):
    def __init__(self, depth, bits_list, width=1.0, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        widths = [max(1, round(w * width)) for w in (16, 32, 64)]
        top = max(bits_list)
        self.stem = QConv2d(3, widths[0], 3, 1, 1, bits_list, Policy(top, 8, True))
        self.stem_bn = SwitchBN2d(widths[0], bits_list)
        blocks, c_in = [], widths[0]
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(Block(c_in, c_out, 2 if stage > 0 and i == 0 else 1, bits_list))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = QLinear(widths[2], classes, bits_list, Policy(top))

    def forward(self, images):
        x = torch.round(255 * images)
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def set_bits(model, b):
    for m in model.modules():
        if hasattr(m, "bits"):
            m.bits = b


def optimizer(model, lr=0.1, weight_decay=4e-5):
    groups = []
    for p in model.parameters():
        decay = (p.dim() == 4 and p.shape[1] != 1) or p.dim() == 2
        groups.append({"params": [p], "weight_decay": weight_decay if decay else 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


def time_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bits", default="8,6,5,4")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--input", type=int, default=32)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's op table for one joint step instead of timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    bits = [int(b) for b in args.bits.split(",")]
    model = CifarResNet(args.depth, bits, args.width).to(dev)
    opt = optimizer(model)
    images = torch.rand(args.batch, 3, args.input, args.input, device=dev)
    labels = torch.arange(args.batch, device=dev) % 10
    name = f"resnet{args.depth} ×{args.width:g} {{{','.join(map(str, bits))}}}"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step():
        model.train()
        opt.zero_grad()
        for b in bits:
            set_bits(model, b)
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
        opt.step()
        sync()

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        return

    out = []
    ms = time_ms(step, 1, args.iters)
    out.append({"name": f"train step {name}, batch {args.batch}, {args.input}x{args.input}",
                "ms": ms, "throughput": args.batch / (ms * 1e-3), "unit": "img/s"})
    model.eval()
    for b in bits:
        set_bits(model, b)

        def forward():
            with torch.no_grad():
                model(images)
            sync()

        ms = time_ms(forward, 1, args.iters)
        out.append({"name": f"eval forward {name} @{b}b, batch {args.batch}", "ms": ms,
                    "throughput": args.batch / (ms * 1e-3), "unit": "img/s"})
    print(json.dumps({"device": f"pytorch {torch.__version__} {args.device} "
                      f"{torch.get_num_threads()} threads", "results": out}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
