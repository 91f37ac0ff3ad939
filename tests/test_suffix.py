"""The part of a model downstream of a tensor (halut_onnx/suffix.py), and the held-out comparisons that run only it."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import halut_onnx.analyze as analyze_module
from budget_models import mlp3, write_files
from halut_models import make_model
from halut_onnx.analyze import AnalyzeOptions, analyze, model_session
from halut_onnx.options import ConvertOptions
from halut_onnx.passes import LayerRewrite, rewrite_model
from halut_onnx.suffix import downstream, suffix_model


def side_inputs(rng) -> onnx.ModelProto:
    """x [N, 8] -> Relu -> a -> MatMul (the layer) -> b -> Mul with Sigmoid(x) -> Reshape to Shape(x) -> Add x -> y;
    Sigmoid(x) and Shape(x) do not depend on a, so the part downstream of a reads them (and x) from upstream."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    extra = helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Sigmoid", ["x"], ["s"], name="gate"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="layer"),
        helper.make_node("Mul", ["b", "s"], ["c"], name="mul"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Reshape", ["c", "shape"], ["d"], name="reshape"),
        helper.make_node("Add", ["d", "x"], ["y"], name="add"),
        helper.make_node("Neg", ["a"], ["extra"], name="not_needed_for_y"),
    ]
    graph = make_model(nodes, [x], [y, extra], {"w": rng.standard_normal((8, 8)).astype(np.float32)})
    return graph


def test_downstream_nodes_and_boundary(rng):
    model = side_inputs(rng)
    nodes, boundary = downstream(model.graph, "a", ["y"])
    assert [model.graph.node[i].name for i in nodes] == ["layer", "mul", "reshape", "add"]
    assert boundary == ["a", "s", "shape", "x"]  # start first; the initializer w is not a boundary
    nodes, boundary = downstream(model.graph, "a", ["y", "extra"])
    assert [model.graph.node[i].name for i in nodes] == ["layer", "mul", "reshape", "add", "not_needed_for_y"]
    assert downstream(model.graph, "s", ["extra"]) == ([], ["s"])


def test_suffix_model_fed_upstream_values_gives_the_full_output(rng):
    model = side_inputs(rng)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    probe = copy.deepcopy(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in ("a", "s", "shape"))
    y, _, a, s, shape = model_session(probe).run(None, {"x": x})
    nodes, boundary = downstream(model.graph, "a", ["y"])
    values = {"a": a, "s": s, "shape": shape, "x": x}
    sub = suffix_model(model, nodes, {n: values[n] for n in boundary}, ["y"])
    onnx.checker.check_model(sub)
    assert [o.name for o in sub.graph.output] == ["y"] and [t.name for t in sub.graph.initializer] == ["w"]
    np.testing.assert_array_equal(model_session(sub).run(None, values)[0], y)
    expected = (np.maximum(x, 0) @ onnx.numpy_helper.to_array(model.graph.initializer[0])) / (1 + np.exp(-x)) + x
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_a_graph_with_a_subgraph_is_not_cut(rng):
    # the If's body reads d by name: no node input shows that it depends on a
    model = side_inputs(rng)
    assert downstream(model.graph, "a", ["y"]) is not None
    branch = helper.make_graph([helper.make_node("Identity", ["d"], ["z"])], "then", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    cond = helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True]))
    model.graph.node.extend([cond, helper.make_node("If", ["cond"], ["e"], then_branch=branch, else_branch=branch)])
    assert downstream(model.graph, "a", ["y"]) is None


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("suffix")
    onnx.save(mlp3(rng), folder / "m.onnx")
    write_files(folder / "calib", rng)
    analysis = analyze(folder / "m.onnx", folder / "calib", AnalyzeOptions(
        ConvertOptions(progress=False), codebooks=(4,), encoders=("pq", "tree"), timing=False))
    return analysis


def _values(comparison) -> dict:
    return {k: v for k, v in comparison.values().items() if v is not None}  # ctc: None, not a sequence output


def _single(analysis, layer, key):
    cand = analysis.candidates[layer]
    return rewrite_model(analysis.work, [LayerRewrite(cand, analysis.learned[(layer, key)], "")]), cand.input_name


def test_compare_from_a_layer_input_equals_the_whole_model(case, monkeypatch):
    ev = case.evaluator
    starts = [case.candidates[r.layer].input_name for r in case.rows]
    assert set(ev._groups) == set(starts) and len(set(ev._groups.values())) == 1
    for r in case.rows:
        model, start = _single(case, r.layer, r.setting.key)
        whole = _values(ev.compare(model))
        assert _values(ev.compare(model, start=start)) == pytest.approx(whole, rel=1e-6)
        assert (r.cosine, r.nmse, r.agreement) == pytest.approx((whole["cosine"], whole["nmse"], whole["agreement"]),
                                                                 rel=1e-6)
    # a memory bound below one layer's upstream tensors: a group per layer, fetched as each is reached
    monkeypatch.setattr(analyze_module, "SUFFIX_CACHE_BYTES", 1)
    small = copy.copy(ev)
    small._groups, small._values = {}, {}
    small.plan(starts)
    assert len(set(small._groups.values())) == 3
    for r in case.rows:
        model, start = _single(case, r.layer, r.setting.key)
        assert _values(small.compare(model, start=start)) == pytest.approx(_values(ev.compare(model)), rel=1e-6)
        assert set(small._values) == small._groups[start]


def test_compare_runs_the_whole_model_when_upstream_differs(case):
    # fc1 and fc2 converted: from fc2's input on, the original's values upstream would hide fc1's change
    ev = case.evaluator
    rewrites = [LayerRewrite(case.candidates[n], case.learned[(n, "pq C=4")], "") for n in ("fc1", "fc2")]
    model = rewrite_model(case.work, rewrites)
    whole = ev.compare(model).values()
    assert ev.compare(model, start=case.candidates["fc2"].input_name).values() == whole
    only_fc2 = _single(case, "fc2", "pq C=4")[0]
    assert ev.compare(only_fc2).values()["nmse"] != whole["nmse"]


def test_a_pickled_evaluator_keeps_its_plan_not_its_tensors(case):
    model, start = _single(case, "fc2", "pq C=4")
    case.evaluator.compare(model, start=start)
    state = case.evaluator.__getstate__()
    assert case.evaluator._values and state["_values"] == {} and state["_groups"] == case.evaluator._groups
