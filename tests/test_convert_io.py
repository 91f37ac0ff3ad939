"""Model files: clear errors for bad files, atomic writes, external data for models over protobuf's 2 GiB."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import halut_onnx.model_io as model_io
from halut_models import mlp
from halut_onnx.errors import ModelFileError
from halut_onnx.model_io import load_model, same_file, save_model_atomic


def test_load_errors(tmp_path):
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path / "missing.onnx")
    assert str(err.value) == f"model file {tmp_path / 'missing.onnx'} does not exist"
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path)
    assert str(err.value) == f"{tmp_path} is not a file"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(ModelFileError, match=rf"^{junk} is not an ONNX model \("):
        load_model(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError) as err:
        load_model(empty)
    assert str(err.value) == f"{empty} is not an ONNX model (no IR version or no graph)"


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path, rng):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    save_model_atomic(mlp(rng), path)
    assert load_model(path).graph.node[0].name == "fc1"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    with pytest.raises(ModelFileError) as err:
        save_model_atomic(mlp(rng), tmp_path / "no" / "m.onnx")
    assert str(err.value) == f"output folder {tmp_path / 'no'} does not exist"


def test_large_models_use_external_data(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 100)  # stands in for 2 GiB
    model = mlp(rng)
    path = save_model_atomic(model, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(path, load_external_data=False).graph.initializer)
    back = {t.name: numpy_helper.to_array(t) for t in load_model(path).graph.initializer}
    for t in model.graph.initializer:
        np.testing.assert_array_equal(back[t.name], numpy_helper.to_array(t))
    assert model.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT  # the caller's model untouched


def test_same_file(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"x")
    assert same_file(tmp_path / "a.onnx", tmp_path / "." / "a.onnx")
    assert not same_file(tmp_path / "a.onnx", tmp_path / "b.onnx")
