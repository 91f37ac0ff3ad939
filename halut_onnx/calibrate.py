"""Calibration: read a directory of sample inputs, run the original model on them, and keep a bounded random
sample of each target layer's input rows.

Format (docs/cli.md): a directory of ``.npz`` files whose arrays are named after the model's inputs, or of ``.npy``
files for a single-input model; each file is one sample (the model's shape without its leading batch dim) or a batch.
Every file is checked against the model's declared input types before it is run, and every problem is a
``CalibrationError`` naming the file and the input.

Memory is bounded by the row cap, not by the data set: each layer keeps a reservoir (Algorithm R) of at most
``max_rows`` rows, a uniform sample without replacement of all the rows it saw, drawn from a seeded generator.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import helper

from .errors import CalibrationError
from .learn import RowSources

log = logging.getLogger(__name__)

_PROTO_LIMIT = 2**31 - 1  # a ModelProto larger than this cannot be serialized in one piece


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and declared shape (ints for fixed dims, names or None for dynamic ones)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...] | None

    def describe_shape(self) -> str:
        if self.shape is None:
            return "any shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed (graph inputs that are not initializers), with their declared types."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise CalibrationError(f"model input {value.name!r} is not a tensor; only tensor inputs are supported")
        ttype = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)) if ttype.elem_type else None
        shape = None
        if ttype.HasField("shape"):
            # A negative dim_value is dynamic: exporters such as paddle2onnx write -1 for the batch dim (onnxruntime
            # accepts any size there), where ONNX would have a dim_param.
            shape = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None)
                for d in ttype.shape.dim
            )
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def _check_array(path: Path, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    """``array`` as a batch for input ``spec`` (a leading dim added to a single sample), or a CalibrationError."""
    where = f"{path}: input {spec.name!r}"
    if spec.dtype is not None and array.dtype != spec.dtype:
        raise CalibrationError(f"{where} has dtype {array.dtype.name}, the model expects {spec.dtype.name}")
    if spec.shape is not None:
        declared = spec.shape
        batch = array
        # One sample: the declared shape without its (dynamic or 1) leading batch dim.
        if array.ndim == len(declared) - 1 and (not isinstance(declared[0], int) or declared[0] == 1):
            batch = array[None]
        fits = batch.ndim == len(declared) and all(
            not isinstance(d, int) or d == n for d, n in zip(declared, batch.shape)
        )
        if not fits:
            raise CalibrationError(
                f"{where} has shape {list(array.shape)}, the model expects {spec.describe_shape()} "
                "(or one sample without the leading batch dim)"
            )
        array = batch
    if array.dtype.kind in "fc":
        finite = np.isfinite(array)
        if not finite.all():
            nans = int(np.isnan(array).sum())
            raise CalibrationError(
                f"{where} has non-finite values ({nans} NaN, {int(finite.size - finite.sum()) - nans} infinite)"
            )
    return array


class CalibrationSet:
    """The calibration files of a directory, checked against a model's inputs as they are read."""

    copies = 0  # noisy copies after each file (augment.AugmentedSet has some)

    def __init__(self, directory: str | os.PathLike, inputs: list[InputSpec], role: str = "calibration"):
        """``role`` names the directory in errors: "calibration" (--calib) or "held-out" (--heldout-data)."""
        self.directory = Path(directory)
        self.inputs = inputs
        if not self.directory.exists():
            raise CalibrationError(f"{role} directory {self.directory} does not exist")
        if not self.directory.is_dir():
            raise CalibrationError(f"{role} path {self.directory} is not a directory")
        self.files = sorted(p for p in self.directory.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if not self.files:
            raise CalibrationError(f"no .npz or .npy {role} files in {self.directory}")
        if not inputs:
            raise CalibrationError("the model has no inputs to feed")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, path: Path) -> dict[str, np.ndarray]:
        """The checked feed dict of one file."""
        names = [spec.name for spec in self.inputs]
        try:
            loaded = np.load(path, allow_pickle=False)
            if path.suffix == ".npy":
                if len(self.inputs) != 1:
                    raise CalibrationError(
                        f"{path}: a .npy file holds one array but the model has {len(names)} inputs "
                        f"({', '.join(names)}); use .npz files with arrays named after the inputs"
                    )
                arrays = {names[0]: np.asarray(loaded)}
            else:
                with loaded:
                    arrays = {key: loaded[key] for key in loaded.files}
        except CalibrationError:
            raise
        except Exception as exc:  # numpy raises OSError, ValueError, zipfile and pickle errors for bad files
            raise CalibrationError(f"{path}: cannot read it as {path.suffix}: {exc}") from None
        unknown = sorted(set(arrays) - set(names))
        if unknown:
            raise CalibrationError(
                f"{path}: unknown input {unknown[0]!r} (the model's inputs: {', '.join(names)})"
            )
        missing = [name for name in names if name not in arrays]
        if missing:
            raise CalibrationError(f"{path}: missing input {missing[0]!r} (the model's inputs: {', '.join(names)})")
        return {spec.name: _check_array(path, spec, arrays[spec.name]) for spec in self.inputs}

    def __iter__(self) -> Iterator[tuple[Path, dict[str, np.ndarray]]]:
        for path in self.files:
            yield path, self.read(path)


class ReservoirSampler:
    """A uniform random sample without replacement of at most ``cap`` rows out of all rows ``add``-ed."""

    def __init__(self, cap: int, rng: np.random.Generator):
        if cap < 1:
            raise ValueError(f"the row cap must be >= 1, got {cap}")
        self.cap = cap
        self.rng = rng
        self.seen = 0
        self._buf: np.ndarray | None = None
        self._tags: np.ndarray | None = None  # int64, one per sampled row, when the rows are offered with tags
        self._filled = 0

    def add(self, rows: np.ndarray, tags: np.ndarray | None = None) -> None:
        self.add_lazy(rows.shape[0], rows.shape[1] if rows.ndim == 2 else 0, lambda index: rows[index],
                      rows.dtype, None if tags is None else (lambda index: tags[index]))

    def add_lazy(self, n: int, width: int, extract, dtype=np.float32, tags=None) -> None:
        """Offer ``n`` rows of ``width`` columns, of which only the ones the sample takes are built:
        ``extract(index)`` returns the rows at the int64 positions ``index`` (ascending in the fill phase), and
        ``tags(index)``, when given (on every call or on none), an int64 tag per row that the sample keeps with it.

        Draws the same random numbers as ``add`` on the same row counts; the conv patch sampler uses it so that
        only the sampled patches are ever extracted (memory bounded by the cap, not by B * Ho * Wo).
        """
        if n == 0:
            return
        if self._buf is None:
            self._buf = np.empty((min(self.cap, max(n, 1024)), width), dtype=dtype)
            if tags is not None:
                self._tags = np.empty(self._buf.shape[0], np.int64)
        take = min(n, self.cap - self._filled)
        if take:
            need = self._filled + take
            if need > self._buf.shape[0]:
                grown = np.empty((min(self.cap, max(need, 2 * self._buf.shape[0])), width), dtype)
                grown[: self._filled] = self._buf[: self._filled]
                self._buf = grown
                if self._tags is not None:
                    self._tags = np.concatenate([self._tags[: self._filled],
                                                 np.empty(grown.shape[0] - self._filled, np.int64)])
            index = np.arange(take, dtype=np.int64)
            self._buf[self._filled : need] = extract(index)
            if self._tags is not None:
                self._tags[self._filled : need] = tags(index)
            self._filled = need
        rest = n - take
        if rest:
            # Algorithm R: the row with global index t replaces slot j ~ U{0..t} when j < cap.
            t = self.seen + take + np.arange(rest, dtype=np.int64)
            slots = self.rng.integers(0, t + 1)
            hit = np.nonzero(slots < self.cap)[0]
            if hit.size:
                # Later rows win a slot drawn twice, as in the sequential algorithm.
                rev = hit[::-1]
                _, first = np.unique(slots[rev], return_index=True)
                winners = rev[first]
                self._buf[slots[winners]] = extract(take + winners)
                if self._tags is not None:
                    self._tags[slots[winners]] = tags(take + winners)
        self.seen += n

    def drop(self, mask: np.ndarray) -> None:
        """Removes the sampled rows where ``mask`` is true (counted as never seen)."""
        kept = self._buf[: self._filled][~mask]
        self._buf[: kept.shape[0]] = kept
        if self._tags is not None:
            self._tags[: kept.shape[0]] = self._tags[: self._filled][~mask]
        self._filled = kept.shape[0]
        self.seen -= int(mask.sum())

    def rows(self) -> np.ndarray:
        if self._buf is None:
            return np.empty((0, 0), dtype=np.float32)
        return self._buf[: self._filled]

    def tags(self) -> np.ndarray | None:
        """The sampled rows' tags, in the order of ``rows()``; None when the rows came without tags."""
        return None if self._tags is None else self._tags[: self._filled]


@dataclass
class CollectedRows:
    """The sampled input rows of one layer and how many rows the calibration data had in all."""

    rows: np.ndarray  # (<= max_rows, D) float32
    rows_seen: int
    rows_dropped: int  # rows with non-finite values, left out of the sample
    problem: str | None = None  # why this layer cannot be learned from the data (e.g. its input was not 2-D+)
    # for timing the layer on the first file as it is, which the analysis also times the model on
    image_shape: tuple[int, int, int] | None = None  # a Conv's input [Cin, H, W] on the first file (1-D: H = 1)
    first_file_rows: int | None = None  # rows (a Conv: output positions) the first file gave
    sources: RowSources | None = None  # which rows are noisy copies of which, when the data was augmented
    copies: int = 0  # the noisy copies of each calibration file the rows came from (augment.AugmentedSet)


def patch_extractor(X: np.ndarray, geometry):
    """(number of patch rows, D, extract) for an NCHW activation ``X`` under a Conv ``geometry``
    (``passes.candidates.ConvGeometry``): ``extract(index)`` builds only the patch rows at the given positions
    (rows in (b, oy, ox) order, elements as ``reference.im2col``), from X padded once."""
    from .reference import conv_pads

    B, Cin, H, W = X.shape
    kh, kw = geometry.kernel_shape
    sh, sw = geometry.strides
    dh, dw = geometry.dilations
    (top, left, bottom, right), Ho, Wo = conv_pads(H, W, **geometry.kwargs())
    padded = np.pad(X, ((0, 0), (0, 0), (top, bottom), (left, right))) if top or left or bottom or right else X
    taps_y, taps_x = np.arange(kh) * dh, np.arange(kw) * dw

    def extract(index: np.ndarray) -> np.ndarray:
        b, pos = np.divmod(index, Ho * Wo)
        oy, ox = np.divmod(pos, Wo)
        iy = (oy * sh)[:, None] + taps_y  # (n, kh)
        ix = (ox * sw)[:, None] + taps_x  # (n, kw)
        patches = padded[b[:, None, None], :, iy[:, :, None], ix[:, None, :]]  # (n, kh, kw, Cin)
        return patches.transpose(0, 3, 1, 2).reshape(len(index), Cin * kh * kw)

    return B * Ho * Wo, Cin * kh * kw, extract


def _as_float32(value: np.ndarray) -> np.ndarray:
    """A float16 or float64 layer input as the float32 the Halut ops compute in (the rewrite casts it so); any
    other array as it is."""
    return value.astype(np.float32) if value.dtype in (np.float16, np.float64) else value


def layer_seed(seed: int, name: str) -> np.random.Generator:
    """The sampling generator of one layer: depends on the seed and the layer only, not on the other layers."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _session(model: onnx.ModelProto, tmpdir: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if model.ByteSize() < _PROTO_LIMIT - 2**20:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    path = os.path.join(tmpdir, "calibration.onnx")
    onnx.save_model(model, path, save_as_external_data=True, location="calibration.onnx.data")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _add_patches(sampler: ReservoirSampler, value: np.ndarray, geometry, D: int, tags=None) -> str | None:
    """Offers the patch rows of a Conv's input (NCHW, or NCL for a 1-D Conv) to ``sampler`` (``tags``: the
    sampler's, of patch positions); a problem description when it cannot."""
    if value.ndim != (3 if geometry.conv1d else 4) or value.dtype != np.float32:
        return "a 1-D Conv needs float32 [B, Cin, L]" if geometry.conv1d else "a Conv needs float32 [B, Cin, H, W]"
    n, width, extract = patch_extractor(geometry.as_nchw(value), geometry)
    if width != D:
        return f"its patches have {width} elements, the weight expects D={D}"
    sampler.add_lazy(n, D, extract, np.float32, tags)
    return None


def _source_tags(feed_number: int, copies: int):
    """Row tags for the feed ``feed_number`` of a set that follows each file with ``copies`` noisy copies
    (augment.AugmentedSet): a row's tag holds its file, its position in the file's rows and whether it is a copy,
    so the copies of one calibration row share all but the last bit. None without copies."""
    if not copies:
        return None
    file, copy = divmod(feed_number, copies + 1)
    return lambda position: (((file << 32) | position) << 1) | (copy > 0)


def _sources(tags: np.ndarray | None) -> RowSources | None:
    return None if tags is None else RowSources(tags >> 1, (tags & 1).astype(bool))


def collect_rows(
    model: onnx.ModelProto,
    calibration: CalibrationSet,
    targets: dict[str, tuple[str, int]],
    max_rows: int,
    seed: int = 0,
    progress: bool = True,
    desc: str = "calibrating",
    copies: dict[str, int] | None = None,
) -> dict[str, CollectedRows]:
    """Run ``model`` on every calibration file and sample the rows of the target tensors.

    ``targets`` maps a layer name to (the tensor holding its input A, D), or for a Conv to (its input X, D, its
    ``ConvGeometry``): a Conv's rows are patches sampled uniformly over batch and output positions, and only the
    sampled ones are extracted. The model gets those tensors as extra graph outputs (it is not changed).
    ``copies`` (of a set with noisy copies, augment.AugmentedSet): a layer named there takes only the first that
    many copies of each file, which are the copies a set with that many would give it.
    """
    from tqdm.auto import tqdm

    graph_inputs = {spec.name for spec in calibration.inputs}
    tensors = sorted({target[0] for target in targets.values()})
    fetched = [t for t in tensors if t not in graph_inputs]
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in fetched:
        if name not in existing:  # untyped: onnxruntime gives it the type the graph computes (float16 layers too)
            augmented.graph.output.append(helper.make_empty_tensor_value_info(name))
    samplers = {layer: ReservoirSampler(max_rows, layer_seed(seed, layer)) for layer in targets}
    dropped = dict.fromkeys(targets, 0)
    problems: dict[str, str] = {}
    image_shapes: dict[str, tuple[int, int, int]] = {}
    first_rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        session = _session(augmented, tmpdir)
        taken = {layer: calibration.copies if copies is None else copies.get(layer, calibration.copies)
                 for layer in targets}
        for number, (path, feed) in enumerate(tqdm(calibration, total=len(calibration), desc=desc, unit="file",
                                                   disable=not progress, leave=False)):
            tags = _source_tags(number, calibration.copies)
            copy = number % (calibration.copies + 1)
            try:
                values = dict(zip(fetched, session.run(fetched, feed))) if fetched else {}
            except Exception as exc:  # onnxruntime raises its own exception types for a bad feed
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CalibrationError(f"{path}: onnxruntime could not run the model on it: {first}") from None
            values.update({name: feed[name] for name in tensors if name in graph_inputs})
            for layer, (tensor, D, *conv) in targets.items():
                if layer in problems or copy > taken[layer]:
                    continue
                value = _as_float32(np.asarray(values[tensor]))
                before = samplers[layer].seen + dropped[layer]
                if conv and conv[0] is not None:
                    problem = _add_patches(samplers[layer], value, conv[0], D, tags)
                    if problem:
                        problems[layer] = f"its input {tensor!r} was {value.dtype.name} {list(value.shape)} on " \
                                          f"{path.name}; {problem}"
                    else:
                        image_shapes.setdefault(layer, tuple(int(v) for v in conv[0].as_nchw(value).shape[1:]))
                        first_rows.setdefault(layer, samplers[layer].seen - before)
                    continue
                if value.ndim < 2 or value.shape[-1] != D or value.dtype != np.float32:
                    problems[layer] = (
                        f"its input {tensor!r} was {value.dtype.name} {list(value.shape)} on {path.name}; "
                        f"needs float32 [..., {D}] of rank >= 2"
                    )
                    continue
                rows = value.reshape(-1, D)
                positions = np.arange(len(rows), dtype=np.int64)
                finite = np.isfinite(rows).all(axis=1)
                if not finite.all():
                    dropped[layer] += int((~finite).sum())
                    rows, positions = rows[finite], positions[finite]
                samplers[layer].add(rows, None if tags is None else tags(positions))
                first_rows.setdefault(layer, samplers[layer].seen + dropped[layer] - before)
    out = {}
    for layer, sampler in samplers.items():
        if targets[layer][2:] and targets[layer][2] is not None:
            sampler_rows = sampler.rows()
            if sampler_rows.size:
                finite = np.isfinite(sampler_rows).all(axis=1)
                if not finite.all():
                    # Patches are drawn before they are seen: non-finite ones are dropped from the sample here.
                    dropped[layer] += int((~finite).sum())
                    sampler.drop(~finite)
        D = targets[layer][1]
        rows = sampler.rows() if sampler.seen else np.empty((0, D), np.float32)
        out[layer] = CollectedRows(np.ascontiguousarray(rows), sampler.seen + dropped[layer], dropped[layer],
                                   problems.get(layer), image_shapes.get(layer), first_rows.get(layer),
                                   _sources(sampler.tags()) if sampler.seen and taken[layer] else None, taken[layer])
        if dropped[layer]:
            log.warning("layer %s: %d calibration rows with non-finite values left out", layer, dropped[layer])
    return out
