"""The errors a user can cause. They are ValueErrors (bad input), so the CLI reports them as one line."""


class ConversionError(ValueError):
    """The model or the options cannot be converted (e.g. no eligible layer, output path is the input)."""


class CalibrationError(ValueError):
    """The calibration data does not fit the model; the message names the file and the input."""


class ModelFileError(ValueError):
    """A model file is missing or is not an ONNX model."""
