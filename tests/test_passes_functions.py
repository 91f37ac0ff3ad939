"""The ONNX function bodies of the Halut ops (what onnxruntime runs without our library) against the numpy spec."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from halut_onnx import reference
from halut_onnx.ops import DOMAIN, ENCODE_PQ, ENCODE_TREE, LOOKUP
from halut_onnx.passes.functions import functions_for

IR_VERSION = 8


def _model(node_inputs, params, x_shape, out_type, op, out_shape, opset):
    """One Halut node with its function; inputs X (or codes) fed, parameters as initializers."""
    first = node_inputs[0]
    x_type = TensorProto.UINT8 if op == LOOKUP else TensorProto.FLOAT
    node = helper.make_node(op, node_inputs, ["out"], domain=DOMAIN, name="n")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(first, x_type, x_shape)],
        [helper.make_tensor_value_info("out", out_type, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(
        graph, ir_version=IR_VERSION, functions=functions_for([op], opset),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _tree_params(rng, D, C):
    return {
        "split_dims": rng.integers(0, D, (C, 4)).astype(np.int64),
        "thresholds": rng.standard_normal((C, 15)).astype(np.float32),
    }


def _pq_params(rng, D, C):
    return {
        "vectors": rng.standard_normal((16, D)).astype(np.float32),
        "biases": rng.standard_normal((C, 16)).astype(np.float32),
    }


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("lead", [(40,), (3, 7), (0,), ()])
def test_tree_function_matches_reference(rng, opset, lead):
    D, C = 13, 5
    params = _tree_params(rng, D, C)
    X = rng.standard_normal((*lead, D)).astype(np.float32)
    X.reshape(-1, D)[::7, params["split_dims"][0, 0]] = np.nan  # NaN goes left
    model = _model(["X", "split_dims", "thresholds"], params, [*lead, D], TensorProto.UINT8, ENCODE_TREE,
                   [*lead, C], opset)
    codes = _run(model, {"X": X})
    expected = reference.encode_tree(X.reshape(-1, D), params["split_dims"], params["thresholds"])
    assert codes.dtype == np.uint8 and codes.shape == (*lead, C)
    np.testing.assert_array_equal(codes.reshape(-1, C), expected)


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("lead", [(50,), (2, 9), (0,)])
def test_lookup_function_matches_reference_bit_for_bit(rng, opset, lead):
    C, M = 6, 11
    params = {
        "lut": rng.integers(-128, 128, (M, C, 16)).astype(np.int8),
        "scale": rng.random(M).astype(np.float32) * 0.01,
        "offset": rng.standard_normal(M).astype(np.float32),
    }
    codes = rng.integers(0, 256, (*lead, C)).astype(np.uint8)  # high bits set: only code & 15 is used
    model = _model(["codes", "lut", "scale", "offset"], params, [*lead, C], TensorProto.FLOAT, LOOKUP,
                   [*lead, M], opset)
    y = _run(model, {"codes": codes})
    expected = reference.lookup(codes.reshape(-1, C), params["lut"], params["scale"], params["offset"])
    assert y.dtype == np.float32 and y.shape == (*lead, M)
    np.testing.assert_array_equal(y.reshape(-1, M), expected)


def _pq_scores64(X, vectors, biases):
    """Exact (float64) scores and their magnitude scale, per row, codebook and prototype."""
    C, D = biases.shape[0], X.shape[1]
    bounds = reference.slice_bounds(D, C)
    scores = np.empty((X.shape[0], C, 16))
    scale = np.empty_like(scores)
    for c in range(C):
        s, e = bounds[c], bounds[c + 1]
        prod = X[:, None, s:e].astype(np.float64) * vectors[None, :, s:e].astype(np.float64)
        scores[:, c] = prod.sum(-1) + biases[c]
        scale[:, c] = np.abs(prod).sum(-1) + np.abs(biases[c])
    return scores, scale


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("D,C", [(37, 5), (64, 16), (8, 8)])
def test_pq_function_agrees_with_reference_up_to_rounding_ties(rng, opset, D, C):
    """The body sums with a MatMul (another order than the contract's): a code may differ from the reference only
    where the two prototypes' exact scores are within float32 rounding of each other, and such flips are rare."""
    params = _pq_params(rng, D, C)
    X = rng.standard_normal((4000, D)).astype(np.float32)
    model = _model(["X", "vectors", "biases"], params, ["N", D], TensorProto.UINT8, ENCODE_PQ, ["N", C], opset)
    codes = _run(model, {"X": X})
    expected = reference.encode_pq(X, params["vectors"], params["biases"])
    differ = codes != expected
    assert differ.mean() <= 1e-3, f"{differ.sum()} of {differ.size} codes differ"
    scores, scale = _pq_scores64(X, params["vectors"], params["biases"])
    rows, cols = np.nonzero(differ)
    gap = np.abs(scores[rows, cols, codes[rows, cols]] - scores[rows, cols, expected[rows, cols]])
    # Both float32 sums are within ~ (terms) * eps * sum|terms| of the exact score.
    bound = 2 * (D + 2) * np.finfo(np.float32).eps * scale[rows, cols, expected[rows, cols]]
    assert np.all(gap <= bound)


def test_pq_function_handles_rank3_and_empty(rng):
    D, C = 20, 3
    params = _pq_params(rng, D, C)
    for shape in [(2, 5, D), (0, D)]:
        X = rng.standard_normal(shape).astype(np.float32)
        model = _model(["X", "vectors", "biases"], params, list(shape), TensorProto.UINT8, ENCODE_PQ,
                       [*shape[:-1], C], 17)
        codes = _run(model, {"X": X})
        assert codes.shape == (*shape[:-1], C)
        if X.size:
            np.testing.assert_array_equal(
                codes.reshape(-1, C), reference.encode_pq(X.reshape(-1, D), params["vectors"], params["biases"])
            )


def test_functions_document_the_ops_and_shape_inference_types_codes(rng):
    D, C, M = 16, 4, 3
    functions = {f.name: f for f in functions_for([ENCODE_TREE, ENCODE_PQ, LOOKUP], 17)}
    assert [list(functions[ENCODE_TREE].input), list(functions[ENCODE_PQ].input), list(functions[LOOKUP].input)] == [
        ["X", "split_dims", "thresholds"], ["X", "vectors", "biases"], ["codes", "lut", "scale", "offset"]]
    assert all(f.domain == DOMAIN and "docs/ops.md" in f.doc_string for f in functions.values())
    params = {**_tree_params(rng, D, C), "lut": np.zeros((M, C, 16), np.int8),
              "scale": np.ones(M, np.float32), "offset": np.zeros(M, np.float32)}
    nodes = [helper.make_node(ENCODE_TREE, ["X", "split_dims", "thresholds"], ["codes"], domain=DOMAIN),
             helper.make_node(LOOKUP, ["codes", "lut", "scale", "offset"], ["Y"], domain=DOMAIN)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 7, D])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in params.items()])
    model = helper.make_model(graph, ir_version=IR_VERSION, functions=list(functions.values()),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    dims = lambda t: [d.dim_param or d.dim_value for d in t.shape.dim]  # noqa: E731
    assert types["codes"].elem_type == TensorProto.UINT8 and dims(types["codes"]) == ["b", 7, C]
    assert types["Y"].elem_type == TensorProto.FLOAT and dims(types["Y"]) == ["b", 7, M]


def test_functions_refuse_old_opsets():
    with pytest.raises(ValueError, match="needs opset >= 11"):
        functions_for([LOOKUP], 10)


def _library_options():
    from halut_onnx.library import get_library_path, session_options

    try:
        get_library_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return session_options()


def test_library_kernels_and_function_bodies_agree(rng):
    """The same model run by the registered kernels and by the inlined function bodies: tree codes and lookups
    exactly equal, PQ codes equal to the spec from the kernels and up to rare rounding ties from the body."""
    options = _library_options()
    D, C, M = 40, 8, 12
    params = {**_tree_params(rng, D, C), **_pq_params(rng, D, C),
              "lut": rng.integers(-128, 128, (M, C, 16)).astype(np.int8),
              "scale": rng.random(M).astype(np.float32), "offset": rng.standard_normal(M).astype(np.float32)}
    nodes = [helper.make_node(ENCODE_TREE, ["X", "split_dims", "thresholds"], ["tcodes"], domain=DOMAIN),
             helper.make_node(LOOKUP, ["tcodes", "lut", "scale", "offset"], ["tY"], domain=DOMAIN),
             helper.make_node(ENCODE_PQ, ["X", "vectors", "biases"], ["pcodes"], domain=DOMAIN),
             helper.make_node(LOOKUP, ["pcodes", "lut", "scale", "offset"], ["pY"], domain=DOMAIN)]
    outs = [helper.make_tensor_value_info(n, t, ["N", k]) for n, t, k in [
        ("tcodes", TensorProto.UINT8, C), ("tY", TensorProto.FLOAT, M),
        ("pcodes", TensorProto.UINT8, C), ("pY", TensorProto.FLOAT, M)]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", D])], outs,
                              [numpy_helper.from_array(v, k) for k, v in params.items()])
    model = helper.make_model(graph, ir_version=IR_VERSION, functions=functions_for([ENCODE_TREE, ENCODE_PQ, LOOKUP], 17),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    X = rng.standard_normal((3000, D)).astype(np.float32)
    kernels = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    bodies = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    k_tc, k_ty, k_pc, k_py = kernels.run(None, {"X": X})
    f_tc, f_ty, f_pc, f_py = bodies.run(None, {"X": X})
    np.testing.assert_array_equal(k_tc, f_tc)
    np.testing.assert_array_equal(k_ty, f_ty)
    np.testing.assert_array_equal(k_pc, reference.encode_pq(X, params["vectors"], params["biases"]))
    assert (k_pc != f_pc).mean() <= 1e-3
    same = (k_pc == f_pc).all(axis=1)
    np.testing.assert_array_equal(k_py[same], f_py[same])
