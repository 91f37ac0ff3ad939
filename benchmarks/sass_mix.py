"""What the lookup kernels' hot loops cost per codebook, read from their machine code (no GPU needed).

The lookup kernels are bound by instruction issue, the integer pipe and shared-memory bandwidth (docs/cuda.md,
"Speed on an H200"), all of which can be counted in the SASS that ptxas emits. This script compiles
custom_ops/src/cuda/halut_cuda.cu for sm_90 with the build's flags, disassembles it with nvdisasm, finds the
innermost loop with the most shared-memory loads (one per codebook) in `lookup_kernel<128, true>` (row-major Y) or
`lookup_nchw_kernel<true>` (NCHW Y, --kernel nchw), and prints its instruction mix by pipe and the cycles per
codebook each resource needs on one SM sub-partition:

    issue    one warp instruction per cycle
    alu      IADD3, LOP3, SHF, PRMT, ISETP, LEA, I2FP ...: 16 lanes per cycle, 2 cycles per warp instruction
    fma      IMAD, IMUL (the FMA pipe's heavy half): 2 cycles per warp instruction
    fp32     FADD, FMUL, FFMA: 1 cycle
    shared   a warp's 16-byte shared load is 512 bytes, 4 of the SM's 128-byte wavefronts, shared by its 4
             sub-partitions: 16 cycles per load when all four run the loop (4 for a conflict-free 4-byte load)

A thread's load of b bytes fetches b table entries, so the kernels compare per 512 entries (one row-major warp's
codebook).

The largest of these bounds the loop; it is a model (no latencies, no dual issue, no bank conflicts), checked
against Nsight Compute on an H200 where a device session allows (docs/cuda.md). nvdisasm is not part of nvcc's
install here: `pip install nvidia-cuda-nvdisasm` provides it (found under site-packages/nvidia/cu13/bin).

    python benchmarks/sass_mix.py                       # the working tree's kernel
    python benchmarks/sass_mix.py --kernel nchw         # the NCHW lookup (HalutLookupConv)
    python benchmarks/sass_mix.py --source A.cu --source B.cu   # compare versions (copies beside the real one,
                                                                # e.g. from `git show REV:custom_ops/...`)
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lookup_kernel<128, true> (the shared-tile kernel of C <= ~450, 128 columns) and lookup_nchw_kernel<true>.
KERNELS = {"rows": "lookup_kernelILi128ELb1E", "nchw": "lookup_nchw_kernelILb1E"}
WIDTH = {".128": 16, ".64": 8, ".U8": 1, ".S8": 1, ".U16": 2, ".S16": 2}
PIPES = {
    "alu": {"IADD3", "LOP3", "SHF", "PRMT", "ISETP", "LEA", "SEL", "I2FP", "VIMNMX", "IMNMX", "VIADD", "VIADDMNMX",
            "MOV", "PLOP3", "BMSK", "SGXT", "FLO", "POPC", "FSEL", "FSETP", "FMNMX", "IABS"},
    "fma": {"IMAD", "IMUL", "IDP"},
    "fp32": {"FADD", "FMUL", "FFMA"},
    "shared": {"LDS", "STS", "LDSM"},
    "global": {"LDG", "STG", "LD", "ST"},
}
LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)\s*(.*?);")
LABEL = re.compile(r"^(\.L_x_\d+):")
BRANCH = re.compile(r"BRA\s+`\((\.L_x_\d+)\)")


def nvdisasm() -> str:
    found = shutil.which("nvdisasm")
    if found:
        return found
    for candidate in Path(sysconfig.get_paths()["purelib"]).glob("nvidia/cu*/bin/nvdisasm"):
        return str(candidate)
    sys.exit("sass_mix: nvdisasm not found; `pip install nvidia-cuda-nvdisasm` provides it")


def disassemble(source: Path, arch: str) -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        sys.exit("sass_mix: nvcc not found")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        # The build's flags (custom_ops/CMakeLists.txt): --fmad=false keeps products and sums unfused.
        cmd = [nvcc, "-O3", "--fmad=false", "-std=c++17", f"-arch={arch}", "-cubin", "-o", str(cubin),
               f"-I{ROOT / 'custom_ops' / 'src' / 'cuda'}", str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"sass_mix: nvcc failed on {source}:\n{done.stderr[-2000:]}")
        return subprocess.run([nvdisasm(), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout


def function_lines(sass: str, name_part: str) -> list[str]:
    out, inside = [], False
    for line in sass.splitlines():
        if line.startswith(".text."):
            inside = name_part in line
            continue
        if inside:
            out.append(line)
    if not out:
        sys.exit(f"sass_mix: no function containing {name_part!r} in the disassembly")
    return out


def load_bytes(op: str, mods: str) -> int:
    """Bytes one thread's shared load fetches (0 for anything else)."""
    if op != "LDS":
        return 0
    return next((b for m, b in WIDTH.items() if m in mods), 4)


def hot_loop(lines: list[str]) -> list[tuple[str, str]]:
    """(opcode, modifiers) of the innermost loop (a backward branch's body holding no other loop) with the most
    shared-memory loads."""
    labels, loops = {}, []
    for i, line in enumerate(lines):
        m = LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        b = BRANCH.search(line)
        if b and b.group(1) in labels:
            loops.append((labels[b.group(1)], i))
    innermost = [(s, e) for s, e in loops if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2 in loops)]
    best, best_loads = [], -1
    for start, end in innermost:
        body = [(m.group(1), m.group(2)) for m in map(LINE.search, lines[start:end + 1]) if m]
        loads = sum(1 for op, mods in body if load_bytes(op, mods))
        if loads > best_loads:
            best, best_loads = body, loads
    return best


def pipe_of(op: str) -> str:
    if op.startswith("U") and op not in ("UMUL",):
        return "uniform"
    for pipe, ops in PIPES.items():
        if op in ops:
            return pipe
    return "other"


def report(label: str, body: list[tuple[str, str]]) -> dict[str, float]:
    widths = [load_bytes(op, mods) for op, mods in body if load_bytes(op, mods)]
    if not widths:
        sys.exit("sass_mix: no shared-memory loads in the hot loop: is this a shared-tile lookup kernel?")
    codebooks, entries = len(widths), sum(widths) / len(widths)  # entries a thread adds per codebook
    by_pipe = collections.Counter(pipe_of(op) for op, _ in body)
    per = {pipe: n / codebooks for pipe, n in by_pipe.items()}
    bounds = {"issue": len(body) / codebooks, "alu": 2 * per.get("alu", 0), "fma": 2 * per.get("fma", 0),
              "fp32": per.get("fp32", 0), "shared": entries}
    ops = collections.Counter(op for op, _ in body)
    print(f"\n{label}: hot loop of {len(body)} instructions for {codebooks} codebooks, {entries:g} entries per "
          "thread and codebook")
    print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    print(f"  {'pipe':<8} {'per codebook':>12}")
    for pipe in ("alu", "fma", "fp32", "shared", "global", "uniform", "other"):
        if by_pipe.get(pipe):
            print(f"  {pipe:<8} {per[pipe]:>12.2f}")
    scale = 512 / (32 * entries)
    print(f"  {'bound':<8} {'cycles / codebook':>17} {'per 512 entries':>16}")
    for name, cycles in bounds.items():
        print(f"  {name:<8} {cycles:>17.2f} {cycles * scale:>16.2f}")
    limit = max(bounds, key=bounds.get)
    print(f"  -> {bounds[limit]:.2f} cycles per codebook per warp ({bounds[limit] * scale:.2f} per 512 entries), "
          f"bound by {limit}")
    return {name: cycles * scale for name, cycles in bounds.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, action="append",
                    help="halut_cuda.cu to analyse (repeat to compare; default: the working tree's); other versions "
                         "go beside the real one, so that they find its headers")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--kernel", choices=sorted(KERNELS), default="rows", help="row-major (default) or NCHW lookup")
    args = ap.parse_args(argv)
    sources = args.source or [ROOT / "custom_ops" / "src" / "cuda" / "halut_cuda.cu"]
    results = []
    for source in sources:
        sass = disassemble(source.resolve(), args.arch)
        results.append(report(str(source), hot_loop(function_lines(sass, KERNELS[args.kernel]))))
    if len(results) > 1:
        first = max(results[0].values())
        ratios = ", ".join(f"{first / max(r.values()):.2f}x" for r in results)
        print(f"\nhot-loop bound relative to the first: {ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
