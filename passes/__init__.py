"""Graph passes that rewrite an ONNX graph (onnx + onnx-graphsurgeon). Installed as ``halut_onnx.passes``."""
