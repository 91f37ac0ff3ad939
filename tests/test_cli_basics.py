from click.testing import CliRunner

import halut_onnx
from halut_onnx.cli import main


def test_version_matches_package():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"halut-onnx, version {halut_onnx.__version__}"


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output


def test_package_exports_the_conversion_api():
    from halut_onnx.convert import ConvertOptions, convert_model

    assert halut_onnx.convert_model is convert_model
    assert halut_onnx.ConvertOptions is ConvertOptions
