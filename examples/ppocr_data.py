"""Real data for the PP-OCR models that rapidocr ships: rendered English text lines and pages, preprocessed exactly as
rapidocr's recognizer and detector do, plus CTC decoding and the character error rate.

Importable (the ppocr examples and tests use it) and a command line::

    python examples/ppocr_data.py rec --out DIR [--calib 200] [--eval 100]   # DIR/calib, DIR/eval (+ labels.json)
    python examples/ppocr_data.py det --out DIR [--calib 8] [--eval 4]

The text comes from Python's own documentation (see english_text.py); calibration and evaluation lines come from
disjoint sets of sentences. Lines are drawn with Pillow's built-in font (``ImageFont.load_default(size=...)``, the
Aileron font embedded in Pillow >= 10.1), so nothing depends on the fonts a machine happens to have.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import english_text  # noqa: E402

REC_HEIGHT = 48
REC_MIN_WIDTH = 320  # rapidocr's rec_img_shape [3, 48, 320]: batches are padded to at least this width
REC_BATCH = 6  # rapidocr's rec_batch_num
DET_LIMIT_SIDE = 736  # rapidocr's Det limit_side_len with limit_type "min"
DET_THRESH = 0.3  # rapidocr's DBPostProcess binarisation threshold


# --------------------------------------------------------------------------------------------------- models
def rapidocr_models_dir() -> Path:
    """The folder of ONNX models inside the installed rapidocr package (found without importing rapidocr)."""
    spec = find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("rapidocr is not installed: pip install rapidocr (it ships the PP-OCR ONNX models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _find_model(task: str) -> Path:
    folder = rapidocr_models_dir()
    found = sorted(folder.glob(f"*_{task}_*.onnx"))
    if not found:
        raise FileNotFoundError(f"no PP-OCR {task} model (*_{task}_*.onnx) in {folder}")
    # Names start with the PP-OCR version (PP-OCRv4_..., PP-OCRv6_...): the last in sorted order is the newest.
    return found[-1]


def rec_model_path() -> Path:
    """The PP-OCR text recognition model shipped with rapidocr."""
    return _find_model("rec")


def det_model_path() -> Path:
    """The PP-OCR text detection model shipped with rapidocr."""
    return _find_model("det")


def rec_charset(model_path: str | Path) -> list[str]:
    """The recognizer's output classes: CTC blank at 0, the model's ``character`` metadata, then a space.

    This is rapidocr's CTCLabelDecode convention; the length equals the model's last output dimension.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if "character" not in meta:
        raise ValueError(f"{model_path} has no 'character' metadata: not a rapidocr PP-OCR rec model")
    return ["<blank>"] + meta["character"].splitlines() + [" "]


def input_name(model_path: str | Path) -> str:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"{model_path} has {len(names)} inputs, expected 1")
    return names[0]


# ------------------------------------------------------------------------------------------------ rendering
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def render_line(text: str, rng: np.random.Generator) -> np.ndarray:
    """A cropped text line as rapidocr's detector would cut it: HxWx3 uint8, dark text on a light background.

    Font size, margins and ink / paper grey levels vary with ``rng`` so the set is not one rendering of one style.
    """
    from PIL import Image, ImageDraw

    size = int(rng.integers(24, 37))
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    margin_x = int(rng.integers(size // 4, size // 2 + 1))
    margin_y = int(rng.integers(size // 6, size // 3 + 1))
    paper = int(rng.integers(205, 256))
    ink = int(rng.integers(0, 70))
    image = Image.new("L", (right - left + 2 * margin_x, bottom - top + 2 * margin_y), paper)
    ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, fill=ink, font=font)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, 4.0, pixels.shape)  # a little sensor noise
    gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def render_page(
    lines: Sequence[str], rng: np.random.Generator, width: int = 960, height: int = 736
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A page with the given text lines at random positions: HxWx3 uint8 and each line's box (x0, y0, x1, y1).

    Pages vary the way scans and photos do, so that a detector's errors show: font sizes from 14 to 32 pixels, ink
    and paper greys down to a contrast of 60 levels, a blur of up to 1.2 pixels (sigma) and sensor noise of 3-10
    levels. Lines that would not fit below the previous one are left out (the boxes tell which were drawn).
    """
    from PIL import Image, ImageDraw, ImageFilter

    paper = int(rng.integers(170, 256))
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[int, int, int, int]] = []
    y = int(rng.integers(10, 40))
    for text in lines:
        font = _font(int(rng.integers(14, 33)))
        left, top, right, bottom = font.getbbox(text)
        w, h = right - left, bottom - top
        if w >= width - 20:
            continue
        if y + h >= height - 10:
            break
        x = int(rng.integers(10, width - w - 10))
        draw.text((x - left, y - top), text, fill=int(rng.integers(0, min(111, paper - 59))), font=font)
        boxes.append((x, y, x + w, y + h))
        y += h + int(rng.integers(h // 2, 2 * h + 1))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.2))))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, float(rng.uniform(3.0, 10.0)), (height, width))
    gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2), boxes


# -------------------------------------------------------------------------------------------- preprocessing
def rec_resize_norm(image: np.ndarray, max_wh_ratio: float) -> np.ndarray:
    """rapidocr's TextRecognizer.resize_norm_img: height 48, width by aspect ratio, to [-1, 1], zero padding."""
    import cv2

    width = int(REC_HEIGHT * max_wh_ratio)
    h, w = image.shape[:2]
    ratio = w / float(h)
    resized_w = width if math.ceil(REC_HEIGHT * ratio) > width else int(math.ceil(REC_HEIGHT * ratio))
    resized = cv2.resize(image, (resized_w, REC_HEIGHT)).astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((3, REC_HEIGHT, width), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


def rec_batches(images: Sequence[np.ndarray], batch_size: int = REC_BATCH) -> list[tuple[np.ndarray, list[int]]]:
    """Batches as rapidocr forms them: images sorted by aspect ratio, each batch padded to its widest member.

    Returns (tensor [B, 3, 48, W], indices of the images in that batch) pairs.
    """
    ratios = np.array([img.shape[1] / float(img.shape[0]) for img in images])
    order = np.argsort(ratios, kind="stable")
    batches = []
    for start in range(0, len(images), batch_size):
        idx = [int(i) for i in order[start : start + batch_size]]
        max_ratio = max(REC_MIN_WIDTH / REC_HEIGHT, *(ratios[i] for i in idx))
        tensor = np.stack([rec_resize_norm(images[i], max_ratio) for i in idx]).astype(np.float32)
        batches.append((tensor, idx))
    return batches


def det_preprocess(image: np.ndarray, limit_side_len: int = DET_LIMIT_SIDE) -> np.ndarray:
    """rapidocr's DetPreProcess (limit_type "min"): scale up to the side limit, sides multiple of 32, to [-1, 1]."""
    import cv2

    h, w = image.shape[:2]
    ratio = float(limit_side_len) / min(h, w) if min(h, w) < limit_side_len else 1.0
    resize_h = int(round(int(h * ratio) / 32) * 32)
    resize_w = int(round(int(w * ratio) / 32) * 32)
    resized = cv2.resize(image, (resize_w, resize_h))
    normed = (resized.astype("float32") * (1 / 255.0) - 0.5) / 0.5
    return normed.transpose((2, 0, 1))[None].astype(np.float32)


# --------------------------------------------------------------------------------------------------- metrics
def ctc_greedy_decode(probs: np.ndarray, charset: Sequence[str]) -> list[str]:
    """Best-path CTC decoding of [B, T, K] scores: argmax per frame, merge repeats, drop blanks (class 0)."""
    if probs.ndim != 3 or probs.shape[2] != len(charset):
        raise ValueError(f"probs must be [B, T, {len(charset)}], found {list(probs.shape)}")
    texts = []
    for best in probs.argmax(axis=2):
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != 0
        texts.append("".join(charset[k] for k in best[keep]))
    return texts


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit cost insert / delete / substitute)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate: total edit distance over total reference length."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("the references are empty")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total


def det_map_agreement(reference: np.ndarray, candidate: np.ndarray, thresh: float = DET_THRESH) -> dict[str, float]:
    """Pixel agreement of two detection probability maps binarised at ``thresh`` (rapidocr's DB threshold).

    Returns IoU, precision, recall and F1 of the candidate's text pixels against the reference's.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"maps differ in shape: {list(reference.shape)} vs {list(candidate.shape)}")
    ref, cand = reference > thresh, candidate > thresh
    both = float(np.logical_and(ref, cand).sum())
    union = float(np.logical_or(ref, cand).sum())
    precision = both / max(float(cand.sum()), 1.0)
    recall = both / max(float(ref.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"iou": both / max(union, 1.0), "precision": precision, "recall": recall, "f1": f1}


def det_box_recall(prob: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], scale: tuple[float, float],
                   thresh: float = DET_THRESH, min_cover: float = 0.5) -> float:
    """Fraction of ground-truth line boxes found: at least ``min_cover`` of the box's core is text in the map.

    The core is the middle third of the box's height and its middle 80 % of width: DB models mark a shrunk
    text region (rapidocr's post-processing grows it back), so the box edges are background even when found.
    """
    if not boxes:
        raise ValueError("no ground-truth boxes")
    mask = prob.reshape(prob.shape[-2:]) > thresh
    sy, sx = scale
    found = 0
    for x0, y0, x1, y1 in boxes:
        h, w = y1 - y0, x1 - x0
        top, bottom = int((y0 + h / 3) * sy), int(math.ceil((y1 - h / 3) * sy))
        left, right = int((x0 + w / 10) * sx), int(math.ceil((x1 - w / 10) * sx))
        found += mask[top : max(bottom, top + 1), left : max(right, left + 1)].mean() >= min_cover
    return found / len(boxes)


def det_boxes(prob: np.ndarray) -> list[np.ndarray]:
    """The text boxes rapidocr outputs for a detection map [1, 1, H, W]: its own DB post-processing with its default
    settings (binarised at 0.3, boxes scored >= 0.5, grown by 1.6), as quadrilaterals [4, 2] in map pixels."""
    from rapidocr.ch_ppocr_det.utils import DBPostProcess

    post = DBPostProcess(thresh=DET_THRESH, box_thresh=0.5, unclip_ratio=1.6)
    boxes, _ = post(prob, prob.shape[-2:])
    return [np.asarray(b, dtype=np.int32) for b in boxes]


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two quadrilaterals [4, 2] (integer pixel coordinates), by rasterising both."""
    import cv2

    lo = np.minimum(a.min(axis=0), b.min(axis=0))
    size = tuple(int(v) + 1 for v in (np.maximum(a.max(axis=0), b.max(axis=0)) - lo)[::-1])
    masks = []
    for quad in (a, b):
        mask = np.zeros(size, np.uint8)
        cv2.fillPoly(mask, [(quad - lo).astype(np.int32)], 1)
        masks.append(mask.astype(bool))
    union = np.count_nonzero(masks[0] | masks[1])
    return np.count_nonzero(masks[0] & masks[1]) / union if union else 0.0


def box_matches(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], min_iou: float = 0.5) -> int:
    """Boxes of ``candidate`` matched one to one to boxes of ``reference`` with IoU >= ``min_iou`` (ICDAR-style
    detection matching), each reference box greedily taking its best free candidate."""
    free = set(range(len(candidate)))
    matched = 0
    for ref in reference:
        best = max(free, key=lambda j: quad_iou(ref, candidate[j]), default=None)
        if best is not None and quad_iou(ref, candidate[best]) >= min_iou:
            free.remove(best)
            matched += 1
    return matched


def det_hmean(reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]) -> dict:
    """Precision, recall and hmean (F1) of the candidate's boxes against the reference's, over pages."""
    matched = sum(box_matches(r, c) for r, c in zip(reference, candidate, strict=True))
    n_ref, n_cand = sum(map(len, reference)), sum(map(len, candidate))
    precision, recall = matched / max(n_cand, 1), matched / max(n_ref, 1)
    return {"precision": precision, "recall": recall, "hmean": 2 * precision * recall / max(precision + recall, 1e-12),
            "boxes": n_ref}


# ---------------------------------------------------------------------------------------------- data sets
@dataclass
class RecSet:
    """Preprocessed text lines: batches (each [B, 3, 48, W]) and the text of each batch's lines."""

    batches: list[np.ndarray]
    texts: list[list[str]]

    @property
    def references(self) -> list[str]:
        return [t for batch in self.texts for t in batch]


def make_rec_set(lines: Sequence[str], seed: int, batch_size: int = REC_BATCH) -> RecSet:
    rng = np.random.default_rng(seed)
    images = [render_line(text, rng) for text in lines]
    batches = rec_batches(images, batch_size)
    return RecSet([tensor for tensor, _ in batches], [[lines[i] for i in idx] for _, idx in batches])


def rec_lines(n_calib: int, n_eval: int, model_path: str | Path) -> tuple[list[str], list[str]]:
    """Calibration and evaluation text lines (disjoint sentences) that the rec model's dictionary can spell."""
    known = set(rec_charset(model_path))
    return english_text.calib_eval_lines(n_calib, n_eval, allowed=known.__contains__)


def write_set(folder: str | Path, name: str, batches: Sequence[np.ndarray], labels: object = None) -> Path:
    """One ``NNNN.npz`` per batch with the array named after the model input ``name``; labels in labels.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    for k, batch in enumerate(batches):
        np.savez(folder / f"{k:04d}.npz", **{name: batch})
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels, indent=1))
    return folder


def read_set(folder: str | Path) -> tuple[list[dict[str, np.ndarray]], object]:
    """The feeds of a folder written by write_set (sorted by file name) and its labels (None if absent)."""
    folder = Path(folder)
    feeds = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            feeds.append({key: data[key] for key in data.files})
    labels_path = folder / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else None
    return feeds, labels


def run_rec(session, batches: Sequence[np.ndarray], charset: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Decoded texts and the per-frame argmax classes of every batch, through an onnxruntime session."""
    name = session.get_inputs()[0].name
    texts, frames = [], []
    for batch in batches:
        probs = session.run(None, {name: batch})[0]
        texts.extend(ctc_greedy_decode(probs, charset))
        frames.append(probs.argmax(axis=2))
    return texts, frames


def make_det_set(lines: Sequence[str], n_pages: int, lines_per_page: int, seed: int):
    """``n_pages`` preprocessed pages ([1, 3, H, W] each) with their boxes and the map scale (sy, sx)."""
    rng = np.random.default_rng(seed)
    pages, boxes, scales = [], [], []
    for p in range(n_pages):
        chunk = [lines[(p * lines_per_page + k) % len(lines)] for k in range(lines_per_page)]
        image, page_boxes = render_page(chunk, rng)
        tensor = det_preprocess(image)
        pages.append(tensor)
        boxes.append(page_boxes)
        scales.append((tensor.shape[2] / image.shape[0], tensor.shape[3] / image.shape[1]))
    return pages, boxes, scales


# ---------------------------------------------------------------------------------------------------- CLI
def _session(model_path: str | Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def _cli_rec(args: argparse.Namespace) -> None:
    model = rec_model_path()
    charset = rec_charset(model)
    calib_lines, eval_lines = rec_lines(args.calib, args.eval, model)
    calib = make_rec_set(calib_lines, seed=args.seed)
    evaluation = make_rec_set(eval_lines, seed=args.seed + 1)
    name = input_name(model)
    write_set(Path(args.out) / "calib", name, calib.batches)
    write_set(Path(args.out) / "eval", name, evaluation.batches, labels=evaluation.texts)
    texts, _ = run_rec(_session(model), evaluation.batches, charset)
    print(f"model        {model}")
    print(f"calib        {len(calib_lines)} lines in {len(calib.batches)} files -> {Path(args.out) / 'calib'}")
    print(f"eval         {len(eval_lines)} lines in {len(evaluation.batches)} files -> {Path(args.out) / 'eval'}")
    print(f"original CER {100 * cer(evaluation.references, texts):.2f} %")


def _cli_det(args: argparse.Namespace) -> None:
    model = det_model_path()
    rec = rec_model_path()
    calib_lines, eval_lines = rec_lines(args.calib * args.lines, args.eval * args.lines, rec)
    name = input_name(model)
    calib_pages, _, _ = make_det_set(calib_lines, args.calib, args.lines, seed=args.seed)
    eval_pages, eval_boxes, scales = make_det_set(eval_lines, args.eval, args.lines, seed=args.seed + 1)
    write_set(Path(args.out) / "calib", name, calib_pages)
    write_set(Path(args.out) / "eval", name, eval_pages, labels={"boxes": eval_boxes, "scales": scales})
    session = _session(model)
    recalls = [det_box_recall(session.run(None, {name: page})[0], b, s)
               for page, b, s in zip(eval_pages, eval_boxes, scales)]
    print(f"model        {model}")
    print(f"calib        {len(calib_pages)} pages -> {Path(args.out) / 'calib'}")
    print(f"eval         {len(eval_pages)} pages -> {Path(args.out) / 'eval'}")
    print(f"line recall  {100 * float(np.mean(recalls)):.1f} % (original model, box core >= 50 % text pixels)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    rec = sub.add_parser("rec", help="rendered text lines for the recognition model")
    rec.add_argument("--out", required=True)
    rec.add_argument("--calib", type=int, default=200, help="calibration lines")
    rec.add_argument("--eval", type=int, default=100, help="evaluation lines")
    rec.add_argument("--seed", type=int, default=0)
    det = sub.add_parser("det", help="rendered pages for the detection model")
    det.add_argument("--out", required=True)
    det.add_argument("--calib", type=int, default=8, help="calibration pages")
    det.add_argument("--eval", type=int, default=4, help="evaluation pages")
    det.add_argument("--lines", type=int, default=12, help="text lines per page")
    det.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    (_cli_rec if args.task == "rec" else _cli_det)(args)


if __name__ == "__main__":
    main()
