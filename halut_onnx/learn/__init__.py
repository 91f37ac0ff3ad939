"""Learning a Halut (MADDNESS) replacement of one linear layer from calibration activations.

``learn_layer(A, W, bias, LearnOptions(...))`` returns a ``HalutLayer`` holding the encoder (trees or folded
output-metric prototypes), the float LUT and its int8 form for the ``ai.halut`` ops, and a ``LearnReport``.
docs/learning.md describes the algorithms and the measurements behind the defaults.
"""

from .layer import HalutLayer, LearnOptions, LearnReport, RowSources, learn_layer

__all__ = ["HalutLayer", "LearnOptions", "LearnReport", "RowSources", "learn_layer"]
