"""Graphs as real exporters write them: a torch nn.TransformerEncoder (random weights) converts every weight
MatMul / Gemm, including the second layer's, whose parameters torch's exporter writes as Identity nodes on the first
layer's initializers (the layers are deep copies, so their initial values are equal and deduplicated)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from halut_models import write_calibration
from halut_onnx.convert import ConvertOptions, convert_model
from halut_onnx.library import session_options

torch = pytest.importorskip("torch", reason="the exporter test needs torch: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=2, dim_feedforward=64, batch_first=True, dropout=0.0)
    encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (torch.randn(2, 8, 32),), str(folder / "tf.onnx"), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}}, opset_version=17, dynamo=False)
    return folder


def test_torch_transformer_converts_every_weight_layer(transformer, rng):
    model = onnx.load(str(transformer / "tf.onnx"))
    shared = [n for n in model.graph.node if n.op_type == "Identity"]
    assert shared, "the export no longer writes Identity nodes for the copied layer: this test lost its point"
    x = rng.standard_normal((60, 8, 32)).astype(np.float32)
    write_calibration(transformer / "calib", "x", x[:48], per_file=4)
    result = convert_model(model, transformer / "calib", transformer / "tf.halut.onnx",
                           ConvertOptions(codebooks=16, progress=False))
    converted = [r.name for r in result.layers if r.status == "converted"]
    skipped = {r.name: r.reason for r in result.layers if r.status == "skipped"}
    assert len(converted) == 8, (converted, skipped)  # per layer: QKV, out-projection, two feed-forward
    assert set(skipped.values()) == {"input B is an activation (activation x activation product)"}
    out = onnx.load(str(transformer / "tf.halut.onnx"))
    # The Identity nodes that fed replaced layers (or their folded bias Adds) are gone with them; those feeding the
    # LayerNormalizations stay: no node is left whose output nothing reads.
    read = {name for n in out.graph.node for name in n.input} | {o.name for o in out.graph.output}
    assert [n.name for n in out.graph.node if not set(n.output) & read] == []
    identities = [sum(n.op_type == "Identity" for n in m.graph.node) for m in (model, out)]
    assert identities[1] < identities[0]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x[48:]})[0]
    got = ort.InferenceSession(str(transformer / "tf.halut.onnx"), session_options(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x[48:]})[0]
    cosine = np.sum(ref * got, -1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cosine.mean() > 0.9
