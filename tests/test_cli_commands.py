"""The convert / inspect / eval / bench commands through click's runner: tables, and one-line errors."""

import dataclasses
import json
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from halut_models import low_rank, mlp, write_calibration
from halut_onnx.cli import convert, main
from halut_onnx.options import ConvertOptions
from halut_onnx.records import KEY_SETTINGS, get_metadata


@pytest.fixture
def case(tmp_path, rng):
    onnx.save(mlp(rng), tmp_path / "mlp.onnx")
    data = low_rank(rng, (700, 32))
    write_calibration(tmp_path / "calib", "x", data[:600], per_file=100)
    write_calibration(tmp_path / "test", "x", data[600:], per_file=50)
    return tmp_path


def _run(args, cwd):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args)
    finally:
        os.chdir(old)


CONVERT = ["convert", "mlp.onnx", "--calib", "calib", "-o", "out.onnx", "-C", "4", "--no-progress"]


def test_convert_inspect_eval_bench(case):
    result = _run(CONVERT + ["--encoder", "tree", "--exclude", "fc2"], case)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["layer", "op", "D", "M", "C", "encoder", "rows", "copies", "held-out", "NMSE",
                                "speed"]
    # 600 rows for 64 LUT entries: no noisy copies (--augment auto)
    fc1 = lines[2].split()
    assert fc1[:8] == ["fc1", "MatMul", "32", "24", "4", "tree", "600", "-"]
    assert re.fullmatch(r"\d+\.\d\dx", fc1[9]), fc1  # the kernels timed on the first file's 100 rows
    assert lines[3].startswith("speed: onnxruntime's time for the layer / the encode + lookup ops' (1 thread")
    assert "fc2            Gemm  matched by --exclude 'fc2'" in result.stdout
    assert re.fullmatch(r"Wrote out\.onnx: 1 layers converted, 1 skipped, in \d+\.\d s\.", lines[-1]), lines[-1]

    result = _run(["inspect", "out.onnx"], case)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Converted by halut-onnx ")
    assert lines[1].split() == ["layer", "op", "D", "M", "C", "encoder", "LUT", "bytes", "held-out", "NMSE",
                                "speed"]
    assert lines[3].split()[:7] == ["fc1", "MatMul", "32", "24", "4", "tree", str(24 * 4 * 16)]
    assert lines[3].split()[8] == fc1[9]  # from the metadata
    assert lines[-1].split()[:2] == ["fc2", "Gemm"]

    result = _run(["eval", "mlp.onnx", "out.onnx", "--data", "test", "--no-progress"], case)
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[2].split()
    assert row[:2] == ["y", "50x10"]
    nmse, cosine, top1 = map(float, row[2:5])
    assert nmse < 0.05 and cosine > 0.97 and 0.5 < top1 <= 1

    result = _run(["bench", "mlp.onnx", "out.onnx", "--runs", "3", "--warmup", "1", "--batch", "4"], case)
    assert result.exit_code == 0, result.output
    assert "speedup (original / converted): " in result.stdout and "inputs x [4, 32]" in result.stdout


@pytest.mark.parametrize("speeds,line", [
    ((2.0, 0.5), "fc2 runs slower than onnxruntime's own op: converted, they slow the model down; --exclude them, "
                 "or let --budget choose (its time objective leaves out layers that save no time)"),
    ((0.8, 0.5), "fc1 and fc2 run slower than onnxruntime's own op: "),
    ((2.0, 1.0), None),
])
def test_convert_names_the_layers_slower_than_onnxruntime(case, monkeypatch, speeds, line):
    import halut_onnx.convert as convert_module
    from halut_onnx.kernel_timing import KernelTime

    speed = dict(zip(["fc1", "fc2"], speeds))
    monkeypatch.setattr(convert_module, "time_candidate",
                        lambda n, cand, image_shape, C, encoder: KernelTime(speed[cand.name], 1.0))
    result = _run(CONVERT, case)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [row.split()[-1] for row in lines[2:4]] == [f"{v:.2f}x" for v in speeds]
    slower = [x for x in lines if "slower than onnxruntime" in x]
    assert slower == ([] if line is None else [x for x in slower if x.startswith(line)])
    assert len(slower) == (line is not None)


NO_CUDA = "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers()


@pytest.mark.skipif(not NO_CUDA, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("command", [["bench", "mlp.onnx", "mlp.onnx"],
                                     ["eval", "mlp.onnx", "mlp.onnx", "--data", "test"]])
def test_provider_cuda_needs_onnxruntime_gpu(case, command):
    import onnxruntime as ort

    result = _run(command + ["--provider", "cuda"], case)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"Error: --provider cuda: this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider, only "
        f"{', '.join(ort.get_available_providers())}; install onnxruntime-gpu (docs/cuda.md)\n")


def test_halut_placement_counts_the_nodes_per_provider(case, monkeypatch):
    """One profiled run says which execution provider ran each Halut node: here the CPU, both nodes of each of the
    2 converted layers; none when the library is not loaded (the nodes run as their ONNX functions' plain ops)."""
    from halut_onnx.runtime import halut_placement

    assert _run(CONVERT, case).exit_code == 0
    feed = {"x": np.load(case / "test" / sorted(p.name for p in (case / "test").iterdir())[0])["x"]}
    assert halut_placement(case / "out.onnx", feed) == {"CPUExecutionProvider": 4}
    assert not any(p.name.startswith("profile") for p in case.iterdir())
    monkeypatch.setenv("HALUT_ONNX_LIBRARY", str(case / "missing.so"))
    assert halut_placement(case / "out.onnx", feed) == {}


def test_placement_line_warns_of_halut_nodes_left_on_the_cpu():
    from halut_onnx.cli import _placement_line

    assert _placement_line({"CUDAExecutionProvider": 6}) == "Halut nodes ran on: CUDAExecutionProvider 6"
    assert _placement_line({"CPUExecutionProvider": 6}) == (
        "Halut nodes ran on: CPUExecutionProvider 6\nwarning: 6 Halut nodes ran on the CPU, with copies to and from "
        "the GPU around them: the custom-op library has no CUDA kernels for them (built without nvcc? docs/cuda.md)")
    assert _placement_line({}) == "Halut nodes: none ran as custom ops (the library is not loaded)."


def test_convert_flags_are_the_options_fields():
    flags = {p.name for p in convert.params} - {"model", "calib_dir", "output"}
    assert flags == {f.name for f in dataclasses.fields(ConvertOptions)}
    defaults = {p.name: p.default for p in convert.params if p.name in flags and not p.multiple}
    assert defaults == {k: v for k, v in dataclasses.asdict(ConvertOptions()).items() if k not in ("include", "exclude")}


@pytest.mark.parametrize(
    "args,message",
    [
        (["convert", "nope.onnx", "--calib", "calib", "-o", "o.onnx"], "model file nope.onnx does not exist"),
        (["convert", "junk.onnx", "--calib", "calib", "-o", "o.onnx"], "junk.onnx is not an ONNX model"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "mlp.onnx"],
         "the output path mlp.onnx is the input model; write the output elsewhere"),
        (["convert", "mlp.onnx", "--calib", "empty", "-o", "o.onnx"], "no .npz or .npy calibration files in empty"),
        (["convert", "mlp.onnx", "--calib", "bad", "-o", "o.onnx", "--no-progress"],
         "bad/x.npz: input 'x' has dtype float64, the model expects float32"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--include", "nothing"],
         "no eligible layer in mlp.onnx: 2 layers skipped: fc1: not matched by --include; "
         "fc2: not matched by --include"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--max-rows", "0"], "--max-rows must be >= 1, got 0"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--augment", "-1"],
         "--augment must be >= 0, got -1"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--heldout-data", "test"],
         "--heldout-data needs --budget: held-out files measure the budget metric"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--heldout-files", "0.3"],
         "--heldout-files needs --budget: held-out files measure the budget metric"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--budget", "cosine=0.9", "--heldout-data", "test",
          "--heldout-files", "0.3"],
         "--heldout-files and --heldout-data both given: with --heldout-data no calibration file is held out"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--budget", "cosine=0.9", "--heldout-data",
          "calib/"], "--heldout-data calib is the --calib directory: the held-out files must be other files than the "
                     "ones learned from"),
        (["convert", "mlp.onnx", "--calib", "calib", "-o", "o.onnx", "--budget", "cosine=0.9", "--heldout-data",
          "nope"], "held-out directory nope does not exist"),
        (["analyze", "mlp.onnx", "--calib", "calib", "--heldout-data", "empty"],
         "no .npz or .npy held-out files in empty"),
        (["analyze", "mlp.onnx", "--calib", "calib", "--heldout-data", "bad", "--no-progress"],
         "bad/x.npz: input 'x' has dtype float64, the model expects float32"),
        (["inspect", "nope.onnx"], "model file nope.onnx does not exist"),
        (["eval", "mlp.onnx", "nope.onnx", "--data", "calib"], "model file nope.onnx does not exist"),
        (["bench", "mlp.onnx", "mlp.onnx", "--dim", "N"], "--dim 'N': expected NAME=VALUE with a positive integer VALUE"),
    ],
)
def test_user_errors_are_one_line(case, args, message):
    (case / "junk.onnx").write_text("this is not a model\n" * 20)
    (case / "empty").mkdir(exist_ok=True)
    (case / "bad").mkdir(exist_ok=True)
    np.savez(case / "bad" / "x.npz", x=np.zeros((2, 32)))
    before = (case / "mlp.onnx").read_bytes()
    result = _run(args, case)
    assert result.exit_code == 1
    assert result.stdout == ""
    if message.endswith("not an ONNX model"):
        assert result.stderr.startswith(f"Error: {message} (") and result.stderr.count("\n") == 1
    else:
        assert result.stderr == f"Error: {message}\n"
    assert (case / "mlp.onnx").read_bytes() == before
    assert not (case / "o.onnx").exists()


def test_skipped_table_groups_repeated_reasons():
    from halut_onnx.cli import _skipped_table
    from halut_onnx.records import LayerRecord

    records = [LayerRecord(f"conv{i}", "Conv", "skipped", reason="Conv layers are not converted by this version")
               for i in range(5)] + [LayerRecord("attn", "MatMul", "skipped", reason="input B is an activation")]
    assert _skipped_table(records).splitlines() == [
        "skipped layer            op      reason",
        "-----------------------  ------  ---------------------------------------------",
        "conv0, conv1 and 3 more  Conv    Conv layers are not converted by this version",
        "attn                     MatMul  input B is an activation",
    ]


def test_eval_metrics_labels_and_sequences(rng):
    from halut_onnx.evaluate import OutputMetrics

    labels = OutputMetrics("label")
    ref = rng.integers(0, 10, size=40)
    conv = ref.copy()
    conv[:6] = (conv[:6] + 1) % 10
    labels.add(ref, conv)
    assert labels.nmse is None and labels.cosine is None
    assert labels.top1_agreement == pytest.approx(34 / 40)

    frames = OutputMetrics("probs")
    ref = rng.normal(size=(3, 7, 5)).astype(np.float32)
    conv = ref + rng.normal(scale=0.5, size=ref.shape).astype(np.float32)
    frames.add(ref, conv)
    same = np.argmax(ref, axis=-1) == np.argmax(conv, axis=-1)
    assert frames.top1_agreement == pytest.approx(same.mean())  # every (sample, step) frame counts
    r, c = ref.reshape(3, -1).astype(np.float64), conv.reshape(3, -1).astype(np.float64)
    cosines = np.sum(r * c, axis=1) / np.sqrt(np.sum(r * r, axis=1) * np.sum(c * c, axis=1))
    assert frames.cosine == pytest.approx(cosines.mean())
    assert frames.nmse == pytest.approx(np.sum((c - r) ** 2) / np.sum(r * r))


def test_augment_takes_a_count_or_auto(case):
    result = _run(CONVERT + ["--augment", "two"], case)
    assert result.exit_code == 2 and "Invalid value for '--augment': 'two' is neither a whole number nor 'auto'" in \
        result.stderr
    assert not (case / "out.onnx").exists()
    # 600 rows for 64 LUT entries: auto gives none; 3 copies: 120 real rows held out, 480 and their 1440 copies train
    for value, recorded, rows, copies in (("auto", "auto", "600", "-"), ("3", 3, "2040", "3")):
        result = _run(CONVERT + ["--augment", value], case)
        assert result.exit_code == 0, result.output
        settings = json.loads(get_metadata(onnx.load(case / "out.onnx"))[KEY_SETTINGS])
        assert settings["augment"] == recorded
        assert result.stdout.splitlines()[2].split()[6:8] == [rows, copies]

