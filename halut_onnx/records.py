"""Per-layer conversion records and how a converted model stores them in its metadata_props.

Keys (all JSON values): ``halut.version`` (plain string), ``halut.settings`` (the ConvertOptions),
``halut.layers`` (one object per converted layer), ``halut.skipped`` (name, op, reason per skipped layer).
``halut-onnx inspect`` reads them back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

import onnx

KEY_VERSION = "halut.version"
KEY_SETTINGS = "halut.settings"
KEY_LAYERS = "halut.layers"
KEY_SKIPPED = "halut.skipped"


@dataclass
class LayerRecord:
    """What happened to one MatMul / Gemm / Conv node: converted (with its measurements) or skipped (with why)."""

    name: str
    op_type: str
    status: str  # "converted" or "skipped"
    reason: str | None = None  # why it was skipped
    D: int | None = None
    M: int | None = None
    C: int | None = None
    encoder: str | None = None
    bias_node: str | None = None  # the bias Add (or a Conv's BatchNormalization) folded into the lookup
    rows_seen: int | None = None  # calibration rows of this layer's input in all (noisy copies included)
    copies: int | None = None  # noisy copies of each calibration file the layer learned from (--augment)
    rows_train: int | None = None
    rows_heldout: int | None = None
    ridge: float | None = None
    train_nmse: float | None = None
    heldout_nmse: float | None = None  # float LUT
    heldout_nmse_int8: float | None = None  # int8 LUT, what the lookup op computes
    lut_bytes: int | None = None
    # the layer's kernels alone on the first calibration file's rows, 1 thread (convert.time_record): onnxruntime's
    # MatMul / Conv and the encode + lookup ops, medians of a few runs in ms (None: the library did not load)
    timed_rows: int | None = None
    original_ms: float | None = None
    halut_ms: float | None = None
    notes: list[str] = field(default_factory=list)  # learning warnings, C adjustments

    @property
    def converted(self) -> bool:
        return self.status == "converted"

    @property
    def speedup(self) -> float | None:
        """original_ms / halut_ms: above 1 the converted layer is faster."""
        if self.original_ms is None or not self.halut_ms:
            return None
        return self.original_ms / self.halut_ms

    def to_json(self) -> dict:
        out = {}
        for key, value in asdict(self).items():
            if value is None or value == []:
                continue
            # JSON has no NaN: a layer learned without held-out rows has no held-out error.
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[key] = value
        return out

    @classmethod
    def from_json(cls, data: dict) -> "LayerRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Set (replace) metadata_props entries of ``model`` in place."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def write_records(model: onnx.ModelProto, version: str, settings: dict, records: list[LayerRecord]) -> None:
    set_metadata(
        model,
        {
            KEY_VERSION: version,
            KEY_SETTINGS: json.dumps(settings, sort_keys=True),
            KEY_LAYERS: json.dumps([r.to_json() for r in records if r.converted]),
            KEY_SKIPPED: json.dumps([{"name": r.name, "op_type": r.op_type, "reason": r.reason}
                                     for r in records if not r.converted]),
        },
    )


def read_records(model: onnx.ModelProto) -> tuple[list[LayerRecord], list[LayerRecord]]:
    """(converted, skipped) records from a converted model's metadata ([] for a model without them)."""
    meta = get_metadata(model)

    def load(key: str, status: str) -> list[LayerRecord]:
        try:
            items = json.loads(meta.get(key, "[]"))
        except json.JSONDecodeError:
            raise ValueError(f"metadata entry {key!r} is not valid JSON") from None
        return [LayerRecord.from_json({**item, "status": status}) for item in items]

    return load(KEY_LAYERS, "converted"), load(KEY_SKIPPED, "skipped")
