"""Calibration data: format checks with exact messages, reservoir sampling, row collection through onnxruntime."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from halut_models import IR_VERSION, make_model, mlp
from halut_onnx.calibrate import CalibrationSet, ReservoirSampler, collect_rows, model_inputs
from halut_onnx.errors import CalibrationError


def _two_input_model(rng):
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 8])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["y"], name="fc")]
    return make_model(nodes, inputs, [out], {"w": w})


def test_model_inputs_reads_declared_types(rng):
    specs = model_inputs(_two_input_model(rng))
    assert [(s.name, s.dtype, s.shape) for s in specs] == [
        ("a", np.float32, ("N", 8)), ("b", np.float32, (2, 8))]


def test_negative_dim_value_is_a_dynamic_dim(rng, tmp_path):
    """paddle2onnx declares the batch dim as dim_value -1 (PP-OCR's cls model: [-1, 3, ?, ?]); onnxruntime takes any
    size there, and so must the calibration check and bench's random inputs."""
    model = _two_input_model(rng)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    specs = model_inputs(model)
    assert specs[0].shape == (None, 8)
    np.savez(tmp_path / "0.npz", a=np.ones((5, 8), np.float32), b=np.ones((2, 8), np.float32))
    [(_, feed)] = list(CalibrationSet(tmp_path, specs))
    assert feed["a"].shape == (5, 8)

    from halut_onnx.bench import random_feed

    assert random_feed(specs, 3, {}, rng)["a"].shape == (3, 8)


def _calib(tmp_path, rng, files):
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif name.endswith(".npy"):
            np.save(path, content)
        else:
            np.savez(path, **content)
    return CalibrationSet(tmp_path, model_inputs(_two_input_model(rng)))


def _read_all(calib):
    return [feed for _, feed in calib]


def test_accepts_samples_and_batches(tmp_path, rng):
    a = rng.standard_normal((5, 8)).astype(np.float32)
    b = rng.standard_normal((2, 8)).astype(np.float32)
    calib = _calib(tmp_path, rng, {"0.npz": {"a": a, "b": b}, "1.npz": {"a": a[0], "b": b}, "notes.txt": b""})
    feeds = _read_all(calib)
    assert len(calib) == 2  # other files are ignored
    assert feeds[0]["a"].shape == (5, 8) and feeds[1]["a"].shape == (1, 8)  # one sample gets a batch dim
    np.testing.assert_array_equal(feeds[1]["a"][0], a[0])


@pytest.mark.parametrize(
    "files,message",
    [
        ({"x.npz": {"a": np.zeros((1, 8), np.float32)}}, "{d}/x.npz: missing input 'b' (the model's inputs: a, b)"),
        ({"x.npz": {"a": np.zeros((1, 8), np.float32), "b": np.zeros((2, 8), np.float32),
                    "c": np.zeros(1, np.float32)}}, "{d}/x.npz: unknown input 'c' (the model's inputs: a, b)"),
        ({"x.npz": {"a": np.zeros((1, 8), np.float64), "b": np.zeros((2, 8), np.float32)}},
         "{d}/x.npz: input 'a' has dtype float64, the model expects float32"),
        ({"x.npz": {"a": np.zeros((1, 7), np.float32), "b": np.zeros((2, 8), np.float32)}},
         "{d}/x.npz: input 'a' has shape [1, 7], the model expects [N, 8] (or one sample without the leading "
         "batch dim)"),
        ({"x.npz": {"a": np.zeros((1, 8), np.float32), "b": np.zeros((3, 8), np.float32)}},
         "{d}/x.npz: input 'b' has shape [3, 8], the model expects [2, 8] (or one sample without the leading "
         "batch dim)"),
        ({"x.npz": {"a": np.array([[np.nan, np.inf, 0, 0, 0, 0, 0, 0]], np.float32),
                    "b": np.zeros((2, 8), np.float32)}},
         "{d}/x.npz: input 'a' has non-finite values (1 NaN, 1 infinite)"),
        ({"x.npy": np.zeros((1, 8), np.float32)},
         "{d}/x.npy: a .npy file holds one array but the model has 2 inputs (a, b); use .npz files with arrays "
         "named after the inputs"),
    ],
)
def test_bad_files_are_named_in_the_error(tmp_path, rng, files, message):
    calib = _calib(tmp_path, rng, files)
    with pytest.raises(CalibrationError) as err:
        _read_all(calib)
    assert str(err.value) == message.format(d=tmp_path)


def test_unreadable_file(tmp_path, rng):
    calib = _calib(tmp_path, rng, {"x.npz": b"not a zip file"})
    with pytest.raises(CalibrationError, match=rf"^{tmp_path}/x.npz: cannot read it as .npz: "):
        _read_all(calib)


def test_missing_and_empty_directories(tmp_path, rng):
    inputs = model_inputs(_two_input_model(rng))
    with pytest.raises(CalibrationError) as err:
        CalibrationSet(tmp_path / "nope", inputs)
    assert str(err.value) == f"calibration directory {tmp_path / 'nope'} does not exist"
    with pytest.raises(CalibrationError) as err:
        CalibrationSet(tmp_path, inputs)
    assert str(err.value) == f"no .npz or .npy calibration files in {tmp_path}"


def test_npy_for_a_single_input_model(tmp_path, rng):
    model = mlp(rng)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    feeds = _read_all(CalibrationSet(tmp_path, model_inputs(model)))
    np.testing.assert_array_equal(feeds[0]["x"], x)


def test_reservoir_keeps_everything_under_the_cap(rng):
    sampler = ReservoirSampler(100, rng)
    rows = np.arange(60, dtype=np.float32).reshape(30, 2)
    sampler.add(rows[:10])
    sampler.add(rows[10:])
    np.testing.assert_array_equal(sampler.rows(), rows)
    assert sampler.seen == 30


def test_reservoir_is_a_uniform_sample_without_replacement():
    """Each of 200 rows (fed in batches of uneven size) lands in a 20-row sample with probability 20/200."""
    cap, total, trials = 20, 200, 3000
    counts = np.zeros(total)
    for seed in range(trials):
        sampler = ReservoirSampler(cap, np.random.default_rng(seed))
        for start, stop in [(0, 7), (7, 30), (30, 31), (31, 200)]:
            sampler.add(np.arange(start, stop, dtype=np.float32)[:, None])
        kept = sampler.rows()[:, 0].astype(int)
        assert kept.shape == (cap,) and len(set(kept)) == cap
        counts[kept] += 1
    p = cap / total
    sd = np.sqrt(trials * p * (1 - p))
    assert np.all(np.abs(counts - trials * p) < 5 * sd)
    # early and late rows equally likely (a bias towards either half would show here)
    assert abs(counts[:100].sum() - counts[100:].sum()) < 5 * sd * np.sqrt(total)


def test_collect_rows_samples_intermediate_and_input_tensors(tmp_path, rng):
    model = mlp(rng)
    x = rng.standard_normal((40, 32)).astype(np.float32)
    for i in range(4):
        np.savez(tmp_path / f"{i}.npz", x=x[10 * i : 10 * (i + 1)])
    calib = CalibrationSet(tmp_path, model_inputs(model))
    inits = {t.name: np.frombuffer(t.raw_data, np.float32).reshape(t.dims) for t in model.graph.initializer}
    h = np.maximum(x @ inits["w1"] + inits["b1"], 0)
    got = collect_rows(model, calib, {"fc1": ("x", 32), "fc2": ("h2", 24)}, max_rows=25, seed=3, progress=False)
    assert got["fc1"].rows_seen == 40 and got["fc1"].rows.shape == (25, 32)
    # every sampled row is one of the real rows, none twice
    for layer, full in [("fc1", x), ("fc2", h)]:
        rows = got[layer].rows
        match = np.array([np.flatnonzero(np.all(np.isclose(full, r, atol=1e-5), axis=1)) for r in rows]).ravel()
        assert len(set(match)) == 25
    again = collect_rows(model, calib, {"fc2": ("h2", 24)}, max_rows=25, seed=3, progress=False)
    np.testing.assert_array_equal(again["fc2"].rows, got["fc2"].rows)  # a layer's sample ignores other layers


def test_collect_rows_reports_onnxruntime_failures_with_the_file(tmp_path, rng):
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 8]) for n in "ab"]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"], name="fc")]
    model = make_model(nodes, inputs, [out], {"w": rng.standard_normal((8, 4)).astype(np.float32)})
    np.savez(tmp_path / "x.npz", a=np.zeros((3, 8), np.float32), b=np.zeros((2, 8), np.float32))
    calib = CalibrationSet(tmp_path, model_inputs(model))
    with pytest.raises(CalibrationError, match=rf"^{tmp_path}/x.npz: onnxruntime could not run the model on it: "):
        collect_rows(model, calib, {"fc": ("s", 8)}, max_rows=10, progress=False)


def test_rows_with_non_finite_values_are_left_out(tmp_path, rng):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Log", ["x"], ["lx"]), helper.make_node("MatMul", ["lx", "w"], ["y"], name="fc")]
    model = make_model(nodes, [x], [out], {"w": rng.standard_normal((8, 4)).astype(np.float32)})
    data = rng.random((30, 8)).astype(np.float32) + 0.5
    data[[3, 17], 5] = -1.0  # log(-1) = NaN in two rows
    np.savez(tmp_path / "x.npz", x=data)
    got = collect_rows(model, CalibrationSet(tmp_path, model_inputs(model)), {"fc": ("lx", 8)}, 100, progress=False)
    assert (got["fc"].rows_seen, got["fc"].rows_dropped, got["fc"].rows.shape) == (30, 2, (28, 8))
    np.testing.assert_allclose(got["fc"].rows, np.log(np.delete(data, [3, 17], axis=0)), rtol=1e-6)


def test_rank1_layer_input_is_reported_not_collected(tmp_path, rng):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)  # no declared shape: rank seen on the data
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g", [x], [out],
                              [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")])
    model = helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", 17)])
    np.savez(tmp_path / "x.npz", x=np.ones(8, np.float32))
    got = collect_rows(model, CalibrationSet(tmp_path, model_inputs(model)), {"fc": ("x", 8)}, 100, progress=False)
    assert got["fc"].problem == "its input 'x' was float32 [8] on x.npz; needs float32 [..., 8] of rank >= 2"


@pytest.mark.parametrize("max_rows", [200, 25])  # everything, and the reservoir's replacement path
def test_augmented_rows_carry_their_sources(tmp_path, rng, max_rows):
    from halut_onnx.augment import AugmentedSet

    model = mlp(rng)
    x = rng.standard_normal((20, 32)).astype(np.float32)
    for i in range(2):
        np.savez(tmp_path / f"{i}.npz", x=x[10 * i : 10 * (i + 1)])
    calib = CalibrationSet(tmp_path, model_inputs(model))
    assert collect_rows(model, calib, {"fc1": ("x", 32)}, max_rows, progress=False)["fc1"].sources is None
    got = collect_rows(model, AugmentedSet(calib, copies=2), {"fc1": ("x", 32)}, max_rows, seed=1,
                       progress=False)["fc1"]
    assert got.rows_seen == 60 and len(got.rows) == min(60, max_rows)
    file, position = np.divmod(got.sources.sample, 1 << 32)
    real = x[10 * file + position]  # the calibration row each sampled row came from
    clean = ~got.sources.noisy
    np.testing.assert_array_equal(got.rows[clean], real[clean])
    noise = got.rows[~clean] - real[~clean]  # a copy: its real row plus noise of 0.1 of the file's std
    assert np.all(noise != 0) and np.abs(noise).max() < 6 * 0.1 * x.std()
    if max_rows == 200:
        assert np.bincount(got.sources.noisy.astype(int)).tolist() == [20, 40]
        assert sorted(np.unique(got.sources.sample, return_counts=True)[1]) == [3] * 20
