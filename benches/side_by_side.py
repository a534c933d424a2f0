"""adabits against PyTorch on the same machine: both benchmarks in turn, A B A B, and the ratios.

Runs `adabits bench --model resnet20 --json` (the fused quantizers, a joint training step over the
bit-width list, an evaluation pass per bit-width) and the PyTorch re-creations written from
the specification (docs/method.md; `benches/pytorch/fake_quant.py` for the three quantizer workloads,
`benches/pytorch/joint_step.py` for the model) alternately for `--rounds` rounds with the same
thread count, and prints each workload's median over the rounds and the ratio
`PyTorch time / adabits time` (above 1: adabits is faster).

Usage (from the repository root, after `cargo build --release -p adabits-cli`):

    python3 benches/side_by_side.py [--rounds 3] [--threads 2] [--batch 128] [--iters 3]
        [--bits 8,6,5,4] [--adabits target/release/adabits] [--json]

PyTorch must be importable by the Python that runs this script (or pass --python).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def key(name):
    """A workload's name without the parts the two sides spell differently."""
    if name.startswith("train step"):
        return "joint train step"
    m = re.match(r"eval forward .* @(\d+)b", name)
    if m:
        return f"eval forward @{m.group(1)}b"
    if name.startswith("qconv3x3"):
        return re.sub(r", batch \d+", "", name)
    return name


def run_json(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)["results"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--bits", default="8,6,5,4")
    p.add_argument("--quant-bits", type=int, default=4, help="bit-width of the quantizer workloads")
    p.add_argument("--adabits", default=os.path.join("target", "release", "adabits"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args()

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    ours = [args.adabits, "bench", "--device", "flex", "--model", "resnet20", "--bits", args.bits,
            "--width", "1", "--input", "32", "--batch", str(args.batch), "--iters",
            str(args.iters), "--json"]
    theirs = [
        [args.python, os.path.join(HERE, "pytorch", "fake_quant.py"), "--device", "cpu",
         "--batch", str(args.batch), "--iters", str(max(args.iters, 5)), "--bits",
         str(args.quant_bits), "--threads", str(args.threads)],
        [args.python, os.path.join(HERE, "pytorch", "joint_step.py"), "--device", "cpu",
         "--batch", str(args.batch), "--iters", str(args.iters), "--bits", args.bits,
         "--threads", str(args.threads)],
    ]
    samples = {}  # key -> {"adabits": [...], "pytorch": [...]}
    start = time.time()
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds} ({time.time() - start:.0f} s)", file=sys.stderr)
        for side, cmds in (("adabits", [ours]), ("pytorch", theirs)):
            for cmd in cmds:
                for m in run_json(cmd, env):
                    samples.setdefault(key(m["name"]), {}).setdefault(side, []).append(m["ms"])
    rows = []
    for k, sides in samples.items():
        a = statistics.median(sides["adabits"]) if "adabits" in sides else None
        t = statistics.median(sides["pytorch"]) if "pytorch" in sides else None
        rows.append({"workload": k, "adabits_ms": a, "pytorch_ms": t,
                     "pytorch_over_adabits": (t / a) if a and t else None})
    if args.json:
        print(json.dumps({"threads": args.threads, "rounds": args.rounds, "rows": rows}, indent=1,
                         ensure_ascii=False))
        return
    print(f"{'workload':<48} {'adabits ms':>11} {'PyTorch ms':>11} {'PyTorch/adabits':>16}")
    for row in rows:
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{row['workload']:<48} {fmt(row['adabits_ms'], '11.2f')} "
              f"{fmt(row['pytorch_ms'], '11.2f')} {fmt(row['pytorch_over_adabits'], '15.2f')}x")
    print(f"medians of {args.rounds} rounds, {args.threads} threads each", file=sys.stderr)


if __name__ == "__main__":
    main()
