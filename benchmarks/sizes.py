"""Step time against model size and context: llmnb and PyTorch for d-models x T, one table and one
picture (issue 10). Each (depth, T) runs `python -m benchmarks.step --no-compile` in its own process at
the same tokens per step (B = TOKENS / T), so the ms per token grow with T only through attention.
PyTorch is benchmarks.step's baseline: the faster eager model (nanoGPT-style or Hugging Face's GPT-2,
both SDPA) timed in a process of its own after llmnb's; the table names which.

    python -m benchmarks.sizes                          # d6, d12 x T = 64, 256, 1024
    python -m benchmarks.sizes --depths 6,12,24 --steps 2 --out benchmarks/sizes
    python -m benchmarks.sizes --depths 24 --add       # d24's rows added to those already in OUT.md

Writes OUT.md (the table) and OUT.svg (ms per token against T, both systems, a line per depth).
On 2 cores a d12 step of 1024 tokens takes ~13 s per system, a d24 step about eight times that.
"""
import argparse
import json
import re
import subprocess
import sys

from llmnb.fileio import atomic_write

TOKENS = 1024


def run_step(depth, T, steps, warmup):
    """One benchmarks.step run's summary: llmnb_ms, torch_ms {model: ms}, baseline (the faster
    eager PyTorch model, or None), llmnb_rss_mb; medians."""
    cmd = [sys.executable, "-m", "benchmarks.step", "-d", str(depth), "-B", str(TOKENS // T), "-T", str(T),
           "--steps", str(steps), "--warmup", str(warmup), "--no-compile", "--no-train"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"benchmarks/sizes.py: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    last = [line for line in r.stdout.splitlines() if line.startswith('{"step"')]
    return json.loads(last[-1])["step"]


def table(rows):
    """The markdown table of the rows, as lines."""
    lines = ["| model | T | B | llmnb ms/step | PyTorch ms/step | PyTorch model | PyTorch / llmnb | llmnb peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['torch'] / r['llmnb']:.2f}x" if r["torch"] else "-"
        lines.append(f"| d{r['depth']} | {r['T']} | {TOKENS // r['T']} | {r['llmnb']:,.0f} | "
                     f"{r['torch'] or 0:,.0f} | {r['torch_model'] or '-'} | {ratio} | {r['rss'] / 1024:.1f} GB |")
    return lines


def read_table(path):
    """The rows of a table this script wrote (for --add); [] if there is none."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    rows = []
    for m in re.finditer(r"^\| d(\d+) \| (\d+) \| \d+ \| ([\d,]+) \| ([\d,]+) \| (\S+) \| [^|]+ \| ([\d.]+) GB \|$",
                         text, re.M):
        torch_ms = float(m.group(4).replace(",", ""))
        rows.append({"depth": int(m.group(1)), "T": int(m.group(2)), "llmnb": float(m.group(3).replace(",", "")),
                     "torch": torch_ms or None, "torch_model": None if m.group(5) == "-" else m.group(5),
                     "rss": float(m.group(6)) * 1024})
    return rows


def svg(rows, Ts):
    """ms per token against T (log scale), a solid line per depth for llmnb, dashed for PyTorch."""
    W, H, L, R, TOP, BOT = 640, 400, 70, 130, 40, 50
    ys = [v for r in rows for v in (r["llmnb"], r["torch"]) if v]
    ymax = max(ys) / TOKENS * 1.1
    xs = {T: L + (W - L - R) * i / max(1, len(Ts) - 1) for i, T in enumerate(Ts)}

    def y(ms):
        return TOP + (H - TOP - BOT) * (1 - ms / TOKENS / ymax)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12"><rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="24" font-size="14">ms per token, {TOKENS} tokens per step (B = {TOKENS}/T): '
           f'llmnb (solid) and PyTorch eager (dashed)</text>',
           f'<line x1="{L}" y1="{H - BOT}" x2="{W - R}" y2="{H - BOT}" stroke="black"/>',
           f'<line x1="{L}" y1="{TOP}" x2="{L}" y2="{H - BOT}" stroke="black"/>']
    for T, x in xs.items():
        out.append(f'<text x="{x:.0f}" y="{H - BOT + 18}" text-anchor="middle">T={T}</text>')
    for i in range(6):
        v = ymax * i / 5
        out.append(f'<text x="{L - 6}" y="{y(v * TOKENS) + 4:.0f}" text-anchor="end">{v:.1f}</text>')
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for k, depth in enumerate(sorted({r["depth"] for r in rows})):
        c = colors[k % len(colors)]
        mine = [r for r in rows if r["depth"] == depth]
        for key, dash in (("llmnb", ""), ("torch", ' stroke-dasharray="6,4"')):
            pts = " ".join(f'{xs[r["T"]]:.0f},{y(r[key]):.0f}' for r in mine if r[key])
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{W - R + 8}" y="{y(mine[-1]["llmnb"]) + 4:.0f}" fill="{c}">d{depth}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="6,12")
    ap.add_argument("--T", default="64,256,1024")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/sizes", help="writes OUT.md and OUT.svg")
    ap.add_argument("--add", action="store_true",
                    help="keep OUT.md's rows of other depths (run depths in separate sittings)")
    args = ap.parse_args(argv)
    Ts = [int(t) for t in args.T.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    rows = [r for r in read_table(args.out + ".md") if r["depth"] not in depths] if args.add else []
    for depth in depths:
        for T in Ts:
            print(f"d{depth} T={T} B={TOKENS // T} ...", flush=True)
            s = run_step(depth, T, args.steps, args.warmup)
            base = s["baseline"]
            rows.append({"depth": depth, "T": T, "llmnb": s["llmnb_ms"], "torch": s["torch_ms"].get(base),
                         "torch_model": base, "rss": s["llmnb_rss_mb"]})
            others = ", ".join(f"{k} {v:.0f} ms" for k, v in s["torch_ms"].items())
            print(f"  llmnb {s['llmnb_ms']:.0f} ms, PyTorch {others or '-'} (baseline {base}), "
                  f"RSS {s['llmnb_rss_mb']:.0f} MB", flush=True)
    rows.sort(key=lambda r: (r["depth"], r["T"]))
    Ts = sorted({r["T"] for r in rows})
    lines = table(rows)
    for path, text in ((args.out + ".md", "\n".join(lines) + "\n"), (args.out + ".svg", svg(rows, Ts))):
        with atomic_write(path) as f:
            f.write(text.encode())
    print("\n".join(lines))
    print(f"wrote {args.out}.md and {args.out}.svg")


if __name__ == "__main__":
    main()
