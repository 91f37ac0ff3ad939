"""What the row-major lookup kernel's hot loop costs per codebook, read from its machine code (no GPU needed).

The lookup kernel is bound by instruction issue, the integer pipe and shared-memory bandwidth (docs/cuda.md, "Speed
on an H200"), all of which can be counted in the SASS that ptxas emits. This script compiles
custom_ops/src/cuda/halut_cuda.cu for sm_90 with the build's flags, disassembles it with nvdisasm, finds the loop of
`lookup_kernel<128, true>` that holds the most 16-byte shared loads (the 16-codebook hot loop) and prints its
instruction mix by pipe and the cycles per codebook each resource needs on one SM sub-partition:

    issue    one warp instruction per cycle
    alu      IADD3, LOP3, SHF, PRMT, ISETP, LEA, I2FP ...: 16 lanes per cycle, 2 cycles per warp instruction
    fma      IMAD, IMUL (the FMA pipe's heavy half): 2 cycles per warp instruction
    fp32     FADD, FMUL, FFMA: 1 cycle
    shared   a warp's 16-byte shared load is 512 bytes, 4 of the SM's 128-byte wavefronts, shared by its 4
             sub-partitions: 16 cycles per load when all four run the loop

The largest of these bounds the loop; it is a model (no latencies, no dual issue, no bank conflicts), checked
against Nsight Compute on an H200 where a device session allows (docs/cuda.md). nvdisasm is not part of nvcc's
install here: `pip install nvidia-cuda-nvdisasm` provides it (found under site-packages/nvidia/cu13/bin).

    python benchmarks/sass_mix.py                       # the working tree's kernel
    python benchmarks/sass_mix.py --source OLD.cu       # another version, e.g. `git show REV:custom_ops/...`
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
KERNEL = "lookup_kernelILi128ELb1E"  # lookup_kernel<128, true>: the shared-tile kernel of C <= ~450, 128 columns
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


def hot_loop(lines: list[str]) -> list[tuple[str, str]]:
    """(opcode, modifiers) of the innermost loop (a backward branch's body holding no other loop) with the most
    16-byte shared loads."""
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
        loads = sum(1 for op, mods in body if op == "LDS" and ".128" in mods)
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
    codebooks = sum(1 for op, mods in body if op == "LDS" and ".128" in mods)
    if codebooks == 0:
        sys.exit("sass_mix: no 16-byte shared loads in the hot loop: is this the shared-tile lookup kernel?")
    by_pipe = collections.Counter(pipe_of(op) for op, _ in body)
    per = {pipe: n / codebooks for pipe, n in by_pipe.items()}
    bounds = {"issue": len(body) / codebooks, "alu": 2 * per.get("alu", 0), "fma": 2 * per.get("fma", 0),
              "fp32": per.get("fp32", 0), "shared": 16.0}
    ops = collections.Counter(op for op, _ in body)
    print(f"\n{label}: hot loop of {len(body)} instructions for {codebooks} codebooks")
    print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    print(f"  {'pipe':<8} {'per codebook':>12}")
    for pipe in ("alu", "fma", "fp32", "shared", "global", "uniform", "other"):
        if by_pipe.get(pipe):
            print(f"  {pipe:<8} {per[pipe]:>12.2f}")
    print(f"  {'bound':<8} {'cycles / codebook':>17}")
    for name, cycles in bounds.items():
        print(f"  {name:<8} {cycles:>17.2f}")
    limit = max(bounds, key=bounds.get)
    print(f"  -> {bounds[limit]:.2f} cycles per codebook per warp, bound by {limit}")
    return bounds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, action="append",
                    help="halut_cuda.cu to analyse (repeat to compare; default: the working tree's)")
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args(argv)
    sources = args.source or [ROOT / "custom_ops" / "src" / "cuda" / "halut_cuda.cu"]
    results = []
    for source in sources:
        # A copy beside the real one, so that `git show REV:...` outputs find halut_cuda.h and launch_plan.h.
        results.append(report(str(source), hot_loop(function_lines(disassemble(source.resolve(), args.arch), KERNEL))))
    if len(results) > 1:
        first = max(results[0].values())
        print("\nhot-loop bound relative to the first: " + ", ".join(f"{first / max(r.values()):.2f}x" for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
