"""The graph pass alone: which nodes are candidates (and why not), and the structure and numbers of the rewrite,
with hand-made layer parameters (no learning)."""

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from halut_models import IR_VERSION, OPSET, mlp, zoo
from halut_onnx import reference
from halut_onnx.passes import LayerRewrite, find_layers, name_nodes, rewrite_model


def _find(model):
    candidates, skipped = find_layers(onnx.shape_inference.infer_shapes(model))
    return {c.name: c for c in candidates}, {s.name: s.reason for s in skipped}


def test_candidates_of_the_zoo(rng):
    candidates, skipped = _find(zoo(rng))
    assert sorted(candidates) == ["fc3d", "fcz", "k_proj", "tiny"]
    assert skipped == {
        "attn": "input B is an activation (activation x activation product)",
        "gemm_ta": "Gemm with transA=1 is not supported",
    }
    fcz = candidates["fcz"]
    assert (fcz.input_name, fcz.output_name, fcz.bias_node, fcz.D, fcz.M) == ("zs", "z2", "fcz_bias", 32, 16)
    assert candidates["fc3d"].input_rank == 3 and candidates["fc3d"].bias is None


def test_gemm_weight_and_bias_are_folded(rng):
    model = mlp(rng)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    candidates, _ = _find(model)
    fc2 = candidates["fc2"]  # transB=1, alpha=0.5, beta=2, C of shape (1, M)
    np.testing.assert_array_equal(fc2.weight, (inits["w2"].T * np.float32(0.5)))
    np.testing.assert_array_equal(fc2.bias, inits["c2"][0] * np.float32(2.0))
    np.testing.assert_array_equal(candidates["fc1"].bias, inits["b1"])


@pytest.mark.parametrize(
    "bias_shape,consumers,folded",
    [((16,), 1, True), ((1, 16), 1, True), ((1,), 1, True), ((5, 16), 1, False), ((1, 1, 16), 1, False),
     ((16,), 2, False)],
)
def test_bias_add_folding_rules(rng, bias_shape, consumers, folded):
    """Only a per-column constant that keeps the output's rank, added to a MatMul with no other consumer, folds."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Add", ["h", "b"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if consumers == 2:
        nodes.append(helper.make_node("Relu", ["h"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outputs, [
            numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b")]),
        ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])
    name_nodes(model)
    candidates, _ = _find(model)
    assert (candidates["fc"].bias_node is not None) == folded
    assert candidates["fc"].output_name == ("y" if folded else "h")


@pytest.mark.parametrize(
    "b,a_type,reason",
    [
        (np.zeros((2, 32, 8), np.float32), TensorProto.FLOAT, "constant B has rank 3; needs a 2-D weight"),
        (np.zeros((32, 8), np.int32), TensorProto.INT32, "input A is int32; only float32, float16 and float64 layers "
                                                          "are converted"),
        (np.zeros((32, 8), np.float16), TensorProto.FLOAT, "input A is float32 but constant B is float16"),
        (helper.make_tensor("w", TensorProto.BFLOAT16, [32, 8], bytes(512), raw=True), TensorProto.BFLOAT16,
         "input A is bfloat16; only float32, float16 and float64 layers are converted"),
    ],
)
def test_ineligible_matmuls_say_why(rng, b, a_type, reason):
    x = helper.make_tensor_value_info("x", a_type, [2, 5, 32])
    model = helper.make_model(
        helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g", [x],
                          [helper.make_tensor_value_info("y", a_type, None)],
                          [b if isinstance(b, onnx.TensorProto) else numpy_helper.from_array(b, "w")]),
        ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])
    assert _find(model)[1] == {"fc": reason}


def test_quantized_and_other_weight_layers_are_skipped_with_reasons(rng):
    """A QDQ-quantized MatMul and Conv say they are quantized (not "an activation"); ConvTranspose, recurrent and
    integer layers with constant weights are listed (an Einsum whatever operand is the constant); an Einsum of two
    activations is not a layer."""
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    inits = {"wq": rng.integers(-127, 128, (32, 8)).astype(np.int8), "s": np.float32(0.1), "z": np.int8(0),
             "cq": rng.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8), "wt": f(4, 6, 3, 3),
             "W": f(1, 32, 32), "R": f(1, 32, 8), "wi": rng.integers(-127, 128, (32, 8)).astype(np.int8),
             "we": f(6, 32)}
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc_q"),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["c"], name="dq_conv"),
        helper.make_node("Conv", ["img", "c"], ["conv_y"], name="conv_q"),
        helper.make_node("ConvTranspose", ["img", "wt"], ["up"], name="up"),
        helper.make_node("LSTM", ["seq", "W", "R"], ["h"], name="lstm", hidden_size=8),
        helper.make_node("MatMulInteger", ["xi", "wi"], ["yi"], name="fc_int"),
        helper.make_node("Einsum", ["x", "x"], ["gram"], name="gram", equation="ij,kj->ik"),
        helper.make_node("Einsum", ["we", "x"], ["proj"], name="proj", equation="kj,ij->ik"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32]),
              helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 4, 8, 8]),
              helper.make_tensor_value_info("seq", TensorProto.FLOAT, [3, 1, 32]),
              helper.make_tensor_value_info("xi", TensorProto.INT8, [5, 32])]
    outputs = [helper.make_empty_tensor_value_info(n) for n in ("y", "conv_y", "up", "h", "yi", "gram", "proj")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k)
                                                        for k, v in inits.items()]),
        ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])
    quantized = "a DequantizeLinear of an integer constant (a quantized model); convert the float model"
    assert _find(model) == ({}, {
        "fc_q": f"input B is {quantized}", "conv_q": f"weight W is {quantized}",
        "up": "ConvTranspose is not converted (the Halut ops replace MatMul, Gemm and Conv)",
        "lstm": "recurrent layer: its weights multiply inside the op at every time step, which no lookup replaces",
        "fc_int": "an integer (quantized) layer; convert the float model",
        "proj": "Einsum is not converted (the Halut ops replace MatMul, Gemm and Conv)",
    })


def _chain_model(rng, chain, shared=2):
    """``shared`` MatMuls x_i @ B, B produced from the initializer W by ``chain``: the ops exporters put between a
    weight and its layers (torch: Identity for a shared parameter)."""
    inits = {"w": rng.standard_normal((32, 16)).astype(np.float32)}
    nodes, source = [], "w"
    for i, (op, attrs) in enumerate(chain):
        if op == "Cast" and attrs["to"] == TensorProto.FLOAT:
            inits["w"] = inits["w"].astype(np.float16)
        if op == "Transpose":
            inits["w"] = np.ascontiguousarray(inits["w"].T)
        nodes.append(helper.make_node(op, [source], [f"w{i}"], name=f"{op.lower()}{i}", **attrs))
        source = f"w{i}"
    inputs, outputs = [], []
    for k in range(shared):
        nodes.append(helper.make_node("MatMul", [f"x{k}", source], [f"y{k}"], name=f"fc{k}"))
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["N", 32]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, ["N", 16]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)]), inits["w"]


@pytest.mark.parametrize("chain,weight", [
    ([("Identity", {})], lambda w: w),
    ([("Transpose", {"perm": [1, 0]})], lambda w: w.T),
    ([("Transpose", {})], lambda w: w.T),
    ([("Cast", {"to": TensorProto.FLOAT})], lambda w: w.astype(np.float32)),
    ([("Cast", {"to": TensorProto.FLOAT}), ("Identity", {}), ("Transpose", {"perm": [1, 0]})],
     lambda w: w.astype(np.float32).T),
], ids=["identity", "transpose", "transpose-default", "cast", "cast-identity-transpose"])
def test_weights_through_value_preserving_ops_are_constants(rng, chain, weight):
    model, w = _chain_model(rng, chain)
    candidates, skipped = _find(model)
    assert sorted(candidates) == ["fc0", "fc1"] and not skipped
    np.testing.assert_array_equal(candidates["fc0"].weight, weight(w))
    assert candidates["fc0"].weight_name == "w"  # the initializer onnxruntime's optimiser leaves for timing


def test_a_weight_cast_to_another_type_than_the_input_is_refused(rng):
    model, _ = _chain_model(rng, [("Cast", {"to": TensorProto.FLOAT16})], shared=1)
    assert _find(model)[1] == {"fc0": "input A is float32 but constant B is float16"}


@pytest.mark.parametrize("converted,kept", [(("fc0", "fc1"), set()), (("fc0",), {"identity0", "w"})])
def test_rewrite_drops_a_weight_chain_nothing_else_reads(rng, converted, kept):
    """Replacing every layer that reads a shared weight removes its Identity and the original weight; a layer left
    in place keeps both."""
    model, _ = _chain_model(rng, [("Identity", {})])
    name_nodes(model)
    candidates, _ = _find(model)
    rewrites = [LayerRewrite(candidates[n], _fake_layer(rng, 32, 16, 4, "tree"), "") for n in converted]
    out = rewrite_model(model, rewrites)
    onnx.checker.check_model(out, full_check=True)
    left = {n.name for n in out.graph.node if n.domain == ""} | {t.name for t in out.graph.initializer
                                                                 if not t.name.startswith("fc")}
    assert left == kept | ({"fc1"} if "fc1" not in converted else set())


def test_rewrite_keeps_the_cast_that_makes_its_activation(rng):
    """skl2onnx casts the model input before the first MatMul: that Cast feeds the encoder and must stay, though it
    has no consumer for a moment while the MatMul is replaced."""
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 32])
    nodes = [helper.make_node("Cast", ["x"], ["xf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "w"], ["y"], name="fc")]
    w = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w")
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [w]),
        ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])
    candidates, _ = _find(model)
    out = rewrite_model(model, [LayerRewrite(candidates["fc"], _fake_layer(rng, 32, 16, 4, "pq"), "")])
    onnx.checker.check_model(out, full_check=True)
    assert [n.name for n in out.graph.node] == ["cast", "fc/halut_encode", "fc/halut_lookup"]


def test_name_nodes_makes_names_unique(rng):
    model = mlp(rng)
    model.graph.node[1].name = ""
    model.graph.node[2].name = "fc1"
    name_nodes(model)
    assert [n.name for n in model.graph.node] == ["fc1", "Add_1", "fc1_2", "fc2"]


def _fake_layer(rng, D, M, C, encoder):
    """Hand-made parameters with the fields of learn.HalutLayer that the rewrite reads."""
    layer = SimpleNamespace(encoder=encoder, D=D, M=M, C=C, split_dims=None, thresholds=None, pq_vectors=None,
                            pq_biases=None)
    if encoder == "tree":
        layer.split_dims = rng.integers(0, D, (C, 4)).astype(np.int64)
        layer.thresholds = rng.standard_normal((C, 15)).astype(np.float32) * 0.3
    else:
        layer.pq_vectors = rng.standard_normal((16, D)).astype(np.float32)
        layer.pq_biases = rng.standard_normal((C, 16)).astype(np.float32)
    layer.lut_q = rng.integers(-128, 128, (M, C, 16)).astype(np.int8)
    layer.scale = (rng.random(M) * 0.01).astype(np.float32)
    layer.offset = rng.standard_normal(M).astype(np.float32)
    return layer


def _layer_ref(layer, X):
    lead = X.shape[:-1]
    X = X.reshape(-1, X.shape[-1])
    if layer.encoder == "tree":
        codes = reference.encode_tree(X, layer.split_dims, layer.thresholds)
    else:
        codes = reference.encode_pq(X, layer.pq_vectors, layer.pq_biases)
    return reference.lookup(codes, layer.lut_q, layer.scale, layer.offset).reshape(*lead, -1)


def _rewrite_zoo(rng, encoder="tree"):
    model = zoo(rng)
    name_nodes(model)
    candidates, _ = _find(model)
    layers = {name: _fake_layer(rng, candidates[name].D, candidates[name].M, 4, encoder) for name in ("fc3d", "fcz")}
    rewrites = [LayerRewrite(candidates[n], layers[n], f"replaces {n}") for n in layers]
    return model, rewrite_model(model, rewrites), layers


def test_rewrite_structure(rng):
    model, out, _ = _rewrite_zoo(rng)
    onnx.checker.check_model(out, full_check=True)
    ops = [(n.domain, n.op_type) for n in out.graph.node]
    assert ops.count(("ai.halut", "HalutEncodeTree")) == 2 and ops.count(("ai.halut", "HalutLookup")) == 2
    assert ops.count(("", "MatMul")) == 3  # k_proj, attn, tiny untouched; fc3d and fcz replaced
    assert ("", "Add") not in ops  # fcz's bias is folded into the lookup
    assert ("ai.onnx.ml", "Scaler") in ops
    names = {n.name: n for n in out.graph.node}
    assert "fc3d" not in names and "fcz_bias" not in names
    encode, lookup = names["fcz/halut_encode"], names["fcz/halut_lookup"]
    assert list(encode.input) == ["zs", "fcz.halut.split_dims", "fcz.halut.thresholds"]
    assert list(encode.output) == ["fcz/halut_codes"]
    assert list(lookup.input) == ["fcz/halut_codes", "fcz.halut.lut", "fcz.halut.scale", "fcz.halut.offset"]
    assert list(lookup.output) == ["z2"] and lookup.doc_string == "replaces fcz"
    inits = {t.name for t in out.graph.initializer}
    assert {"fcz.halut.lut", "fc3d.halut.thresholds"} <= inits and not {"w3", "wz", "bz"} & inits
    assert out.ir_version == model.ir_version == IR_VERSION
    assert {(o.domain, o.version) for o in out.opset_import} == {("", OPSET), ("ai.onnx.ml", 3), ("ai.halut", 1)}
    assert sorted(f.name for f in out.functions) == ["HalutEncodeTree", "HalutLookup"]
    assert (out.producer_name, out.graph.name) == (model.producer_name, model.graph.name)


def test_rewrite_keeps_output_shapes_under_inference(rng):
    _, out, _ = _rewrite_zoo(rng, "pq")
    inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True, data_prop=True)
    for value in inferred.graph.output:
        assert value.type.tensor_type.HasField("shape"), value.name
    codes = {v.name: v for v in inferred.graph.value_info}["fc3d/halut_codes"].type.tensor_type
    assert codes.elem_type == TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in codes.shape.dim] == ["N", "T", 4]


@pytest.mark.parametrize("encoder", ["tree", "pq"])
def test_rewritten_model_computes_the_reference(rng, encoder):
    model, out, layers = _rewrite_zoo(rng, encoder)
    x = rng.standard_normal((3, 5, 32)).astype(np.float32)
    z = rng.standard_normal((3, 32)).astype(np.float32)
    feed = {"x": x, "z": z}
    got = dict(zip(["att", "g", "t"], ort.InferenceSession(out.SerializeToString()).run(None, feed)))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = _layer_ref(layers["fc3d"], x)
    k = x @ inits["wk"]
    z2 = _layer_ref(layers["fcz"], z * np.float32(2.0) - np.float32(1.0))  # Scaler: (z - 0.5) * 2
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["att"], q @ k.transpose(0, 2, 1), **tol)
    np.testing.assert_allclose(got["g"], z2 @ inits["wta"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["t"], z2[:, :4] @ inits["wtiny"], **tol)


@pytest.mark.parametrize(
    "attrs,c_shape,reason",
    [
        ({}, None, None),
        ({"transB": 1}, (16,), None),
        ({"beta": 0.5}, (), None),
        ({}, (5, 16), "bias C of shape (5, 16) differs between rows"),
    ],
)
def test_gemm_variants(rng, attrs, c_shape, reason):
    b = rng.standard_normal((16, 32) if attrs.get("transB") else (32, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(b, "b")]
    inputs = ["x", "b"]
    if c_shape is not None:
        inits.append(numpy_helper.from_array(np.asarray(rng.standard_normal(c_shape), np.float32), "c"))
        inputs.append("c")
    node = helper.make_node("Gemm", inputs, ["y"], name="g", **attrs)
    model = helper.make_model(
        helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 16])], inits),
        ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])
    candidates, skipped = _find(model)
    if reason:
        assert skipped == {"g": reason}
        return
    cand = candidates["g"]
    x = rng.standard_normal((5, 32)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = x @ cand.weight + (0 if cand.bias is None else cand.bias)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_candidates_and_skips(rng):
    """A group-1 Conv, 2-D or 1-D, is a candidate (weight reshaped to (Cin*kh*kw, Cout)); depthwise and grouped
    Convs and a rank-1 MatMul are skipped with their reasons."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [32])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4, 7])
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv", pads=[1, 0, 2, 1], strides=[2, 1]),
             helper.make_node("Conv", ["x", "kd"], ["cd"], name="dw", group=4, auto_pad="SAME_UPPER"),
             helper.make_node("Conv", ["x", "kg"], ["cg"], name="grouped", group=2),
             helper.make_node("Conv", ["s", "k1"], ["c1"], name="conv1d"),
             helper.make_node("MatMul", ["v", "w"], ["m"], name="vec")]
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    inits = {"k": f32(3, 4, 3, 3), "kb": f32(3), "kd": f32(4, 1, 3, 3), "kg": f32(6, 2, 3, 3), "k1": f32(3, 4, 3),
             "w": f32(32, 4)}
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x, v, s], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                  for o in ("c", "cd", "cg", "c1", "m")],
                          [numpy_helper.from_array(a, k) for k, a in inits.items()]),
        ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)])
    candidates, skipped = _find(model)
    assert skipped == {
        "dw": "depthwise Conv (group=4, D=9 per output channel): too few inputs per output for table lookup "
              "(accuracy collapses) and already cheap",
        "grouped": "grouped Conv (group=2, D=18 per group) is not converted: it would need one encoder and LUT per "
                   "group (docs/conv.md)",
        "vec": "input A has rank 1; needs rank >= 2",
    }
    assert sorted(candidates) == ["conv", "conv1d"] and candidates["conv1d"].conv.conv1d
    cand = candidates["conv"]
    assert cand.conv.attributes() == dict(kernel_shape=[3, 3], strides=[2, 1], dilations=[1, 1], auto_pad="NOTSET",
                                          pads=[1, 0, 2, 1]) and not cand.conv.conv1d
    X = f32(2, 4, 5, 5)
    want = ort.InferenceSession(model.SerializeToString()).run(["c"], {"x": X, "v": f32(32), "s": f32(1, 4, 7)})[0]
    rows = reference.im2col(X, **cand.conv.kwargs()) @ cand.weight + cand.bias
    np.testing.assert_allclose(rows.reshape(2, 3, 4, 3).transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)
