"""The examples' data side (text, rendering, preprocessing, metrics) against independent references, and the quick
end-to-end runs of the examples once the convert command exists."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import english_text  # noqa: E402
import example_tools  # noqa: E402

@pytest.fixture(scope="module")
def ppocr():
    pytest.importorskip("rapidocr", reason="rapidocr (PP-OCR models) is in the test extra: pip install -e '.[test]'")
    pytest.importorskip("PIL")
    import ppocr_data

    return ppocr_data


# ------------------------------------------------------------------------------------------------ text
def test_sentences_are_plain_english_and_split_by_content():
    sentences = english_text.english_sentences()
    assert len(sentences) > 800
    assert len(set(sentences)) == len(sentences)
    for s in sentences:
        assert s[0].isupper() and s.endswith(".")
        assert all(32 <= ord(ch) < 127 for ch in s)
        assert "::=" not in s and ">>>" not in s
    sides = {english_text.split_of(s) for s in sentences}
    assert sides == {"calib", "eval"}
    calib, evaluation = english_text.calib_eval_lines(200, 100)
    calib_text = " ".join(s for s in sentences if english_text.split_of(s) == "calib")
    eval_text = " ".join(s for s in sentences if english_text.split_of(s) == "eval")
    assert all(line in calib_text for line in calib) and all(line in eval_text for line in evaluation)
    assert all(12 <= len(line) <= 48 for line in calib + evaluation)


def test_calib_eval_lines_refuses_more_than_the_text_has():
    with pytest.raises(ValueError, match=r"^asked for 100000 calibration and 1 evaluation lines, the text has \d+"):
        english_text.calib_eval_lines(100000, 1)


# --------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    "a, b, expected",
    [("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("same", "same", 0)],
)
def test_edit_distance(ppocr, a, b, expected):
    assert ppocr.edit_distance(a, b) == expected
    assert ppocr.edit_distance(b, a) == expected


def test_cer_is_total_edits_over_total_reference_length(ppocr):
    assert ppocr.cer(["abcd", "ef"], ["abed", "ef"]) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match=r"^2 references but 1 hypotheses$"):
        ppocr.cer(["a", "b"], ["a"])


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks(ppocr):
    charset = ["<blank>", "a", "b", " "]
    path = [1, 1, 0, 1, 2, 2, 3, 0, 0, 2]  # a a _ a b b ' ' _ _ b -> "aab b"
    probs = np.full((1, len(path), 4), 0.01, dtype=np.float32)
    probs[0, np.arange(len(path)), path] = 0.97
    assert ppocr.ctc_greedy_decode(probs, charset) == ["aab b"]
    with pytest.raises(ValueError, match=r"^probs must be \[B, T, 4\], found \[1, 10, 3\]$"):
        ppocr.ctc_greedy_decode(probs[:, :, :3], charset)


def test_det_map_agreement(ppocr):
    ref = np.zeros((1, 1, 4, 4), np.float32)
    ref[..., :2, :] = 0.9  # 8 text pixels
    cand = np.zeros_like(ref)
    cand[..., 1:3, :] = 0.9  # 8 text pixels, 4 shared
    scores = ppocr.det_map_agreement(ref, cand)
    assert scores["iou"] == pytest.approx(4 / 12)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)


def test_det_hmean_matches_boxes_by_iou(ppocr):
    square = np.array([[0, 0], [9, 0], [9, 9], [0, 9]], np.int32)  # 10 x 10 pixels
    assert ppocr.quad_iou(square, square) == 1.0
    assert ppocr.quad_iou(square, square + [5, 0]) == pytest.approx(50 / 150)
    assert ppocr.quad_iou(square, square + [20, 0]) == 0.0
    reference = [[square, square + [40, 0]]]
    # one box moved by 1 pixel (IoU 90/110, matched), one moved by 5 (IoU 1/3, not), one spurious box
    candidate = [[square + [41, 0], square + [5, 0], square + [80, 80]]]
    scores = ppocr.det_hmean(reference, candidate)
    assert scores["recall"] == 0.5 and scores["precision"] == pytest.approx(1 / 3)
    assert scores["hmean"] == pytest.approx(0.4) and scores["boxes"] == 2


# ---------------------------------------------------------------------- preprocessing equals rapidocr's
def test_rec_preprocessing_equals_rapidocr(ppocr):
    from rapidocr.ch_ppocr_rec.main import TextRecognizer

    rng = np.random.default_rng(5)
    recognizer = types.SimpleNamespace(rec_image_shape=[3, 48, 320])
    for text in ["Short.", "A much longer line of text that is wider than 320."]:
        image = ppocr.render_line(text, rng)
        for ratio in (320 / 48, 20.0):
            expected = TextRecognizer.resize_norm_img(recognizer, image, ratio)
            np.testing.assert_array_equal(ppocr.rec_resize_norm(image, ratio), expected)


def test_rec_batches_sort_by_ratio_and_pad_to_widest(ppocr):
    rng = np.random.default_rng(6)
    lines = ["tiny", "a middle sized line", "x", "the widest of these rendered lines, by far", "mid line"]
    images = [ppocr.render_line(t, rng) for t in lines]
    batches = ppocr.rec_batches(images, batch_size=2)
    order = [i for _, idx in batches for i in idx]
    ratios = [images[i].shape[1] / images[i].shape[0] for i in order]
    assert sorted(order) == list(range(5)) and ratios == sorted(ratios)
    for tensor, idx in batches:
        widest = max(320 / 48, *(images[i].shape[1] / images[i].shape[0] for i in idx))
        assert tensor.shape == (len(idx), 3, 48, int(48 * widest)) and tensor.dtype == np.float32


def test_det_preprocessing_equals_rapidocr(ppocr):
    from rapidocr.ch_ppocr_det.utils import DetPreProcess

    rng = np.random.default_rng(7)
    image, boxes = ppocr.render_page(["First line of the page.", "And a second one."], rng, width=500, height=300)
    assert len(boxes) == 2 and image.shape == (300, 500, 3)
    expected = DetPreProcess(736, "min", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])(image)
    got = ppocr.det_preprocess(image)
    assert got.shape == expected.shape and got.shape[2] % 32 == 0 and got.shape[3] % 32 == 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- the real models
def test_rec_charset_matches_the_model_output(ppocr):
    import onnxruntime as ort

    model = ppocr.rec_model_path()
    charset = ppocr.rec_charset(model)
    assert charset[0] == "<blank>" and charset[-1] == " "
    out = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_outputs()[0]
    assert out.shape[-1] == len(charset)


def test_original_rec_model_reads_the_rendered_lines(ppocr, tmp_path):
    """If the rendering or preprocessing were wrong, the unmodified model would not read the lines."""
    model = ppocr.rec_model_path()
    _, lines = ppocr.rec_lines(1, 36, model)
    data = ppocr.make_rec_set(lines, seed=1)
    ppocr.write_set(tmp_path, ppocr.input_name(model), data.batches, labels=data.texts)
    feeds, labels = ppocr.read_set(tmp_path)
    assert labels == data.texts and len(feeds) == len(data.batches)
    session = example_tools.session(model)
    texts, _ = ppocr.run_rec(session, [feed["x"] for feed in feeds], ppocr.rec_charset(model))
    assert ppocr.cer(data.references, texts) < 0.02


def test_original_det_model_finds_the_rendered_lines(ppocr):
    model = ppocr.det_model_path()
    _, lines = ppocr.rec_lines(1, 10, ppocr.rec_model_path())
    pages, boxes, scales = ppocr.make_det_set(lines, n_pages=1, lines_per_page=10, seed=3)
    prob = example_tools.session(model).run(None, {ppocr.input_name(model): pages[0]})[0]
    assert prob.shape[2:] == pages[0].shape[2:]
    assert ppocr.det_box_recall(prob, boxes[0], scales[0]) >= 0.9
    # rapidocr's post-processing gives one box per line: each line's centre lies in exactly one box (the boxes are
    # grown around the glyphs, so an IoU with the glyphs' tight box says little)
    import cv2

    found = ppocr.det_boxes(prob)
    (sy, sx) = scales[0]
    centres = [((x0 + x1) / 2 * sx, (y0 + y1) / 2 * sy) for x0, y0, x1, y1 in boxes[0]]
    inside = [[cv2.pointPolygonTest(box.astype(np.float32), c, False) >= 0 for box in found] for c in centres]
    assert len(found) == len(boxes[0]) and all(sum(row) == 1 for row in inside)


def test_digits_export_matches_scikit_learn(tmp_path):
    pytest.importorskip("skl2onnx")
    import digits_mlp

    model, split = digits_mlp.train()
    x_test, y_test = split.x_test, split.y_test
    path = digits_mlp.export(model, tmp_path / "m.onnx")
    predicted = example_tools.session(path).run(["label"], {"X": x_test})[0]
    np.testing.assert_array_equal(predicted, model.predict(x_test))
    assert model.score(x_test, y_test) > 0.95
    assert example_tools.matmul_layers(path) == 3


def test_format_table_aligns_columns():
    table = example_tools.format_table(["name", "value"], [["a", "1.50"], ["longer", "10.25"]])
    assert table.splitlines() == ["name    value", "------  -----", "a        1.50", "longer  10.25"]


def test_only_layers_matches_exactly_the_named_nodes():
    import re

    flag, pattern = example_tools.only_layers(["MatMul.1", "Gemm_0"])
    assert flag == "--include"
    assert [n for n in ["MatMul.1", "MatMul.12", "MatMulX1", "Gemm_0", "Conv.1"] if re.search(pattern, n)] == [
        "MatMul.1", "Gemm_0"]
    with pytest.raises(ValueError, match=r"^only_layers needs named nodes$"):
        example_tools.only_layers([])


# ------------------------------------------------------------------------------- quick end-to-end runs
def _table_rows(stdout: str) -> dict[str, list[str]]:
    """The rows of the table a script prints last, by their first column (settings contain single spaces only)."""
    lines = stdout.splitlines()
    rule = max(i for i, line in enumerate(lines) if line.startswith("---"))
    return {cells[0]: cells for cells in (line.split("  ") for line in lines[rule + 1 :] if line.strip())
            for cells in [[c.strip() for c in cells if c.strip()]]}


@pytest.fixture(scope="module")
def digits_quick(tmp_path_factory) -> tuple[dict[str, list[str]], Path]:
    """The documented command, end to end, once for the tests below: its table rows by setting, and its --out."""
    pytest.importorskip("skl2onnx")
    out = tmp_path_factory.mktemp("digits")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_mlp.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return _table_rows(result.stdout), out


def test_digits_quick_run_converts_every_layer(digits_quick):
    rows, _ = digits_quick
    assert set(rows) == {"default", "--encoder tree", "--augment 0"}
    for setting, layers, original, converted, drop in rows.values():
        assert layers == "3 of 3" and float(original) == pytest.approx(97.78)
        assert float(drop) == pytest.approx(float(original) - float(converted), abs=0.011)
    # At the defaults (--augment auto: 4, 8 and 4 noisy copies of each of the 1005 calibration rows) measured 2.04
    # points (11 of 540 test digits) on this model, 1.37 on average over 5 training seeds (0.74-2.04,
    # benchmarks/seed_spread.py, docs/examples.md): issue 4's target, at most 1.5, holds on average, not on this
    # seed. From the calibration rows alone (--augment 0) the LUTs are underdetermined: 3.33 here, 2.6 on average.
    assert float(rows["default"][4]) <= 2.5
    assert float(rows["--augment 0"][4]) > float(rows["default"][4]) + 0.5


def test_a_budget_no_layer_fits_is_reported_not_raised(digits_quick, capsys):
    """On the MLP's validation rows the best single layer disagrees on 2 of 252 digits: agreement=0.995 fits none,
    and the examples report that (after the learning's warnings on stderr) instead of failing; 0.95 fits some."""
    _, out = digits_quick
    model, calib = out / "digits_mlp.onnx", out / "calib"
    # by multiply-adds: the time objective's choice (and so the layer named) follows the kernel timings of the run
    options = example_tools.budgets_on(out / "val", ["--budget", "agreement=0.995", "--objective", "macs"])
    assert options == ["--budget", "agreement=0.995", "--objective", "macs", "--heldout-data", str(out / "val")]
    assert example_tools.convert_setting(model, calib, out / "none.onnx", options) is None
    assert not (out / "none.onnx").exists()
    assert capsys.readouterr().out == (
        f"--budget agreement=0.995 --objective macs --heldout-data {out / 'val'}: no layer can be converted within "
        "--budget agreement=0.995; the best single layer is MatMul (pq C=32) with a loss of 0.007937\n")
    loose = example_tools.budgets_on(out / "val", ["--budget", "agreement=0.95", "--objective", "macs"])
    assert example_tools.convert_setting(model, calib, out / "some.onnx", loose) == out / "some.onnx"
    assert example_tools.converted_layers(out / "some.onnx") >= 1
    with pytest.raises(RuntimeError, match=r"^halut-onnx convert -C 0 failed \(1\):\nError: --codebooks must be"):
        example_tools.convert_setting(model, calib, out / "bad.onnx", ["-C", "0"])


def test_digits_split_keeps_the_test_rows_and_holds_out_validation_rows():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    split = example_tools.digits_split()
    features, labels = load_digits(return_X_y=True)
    _, x_test, _, y_test = train_test_split(features, labels, test_size=0.3, random_state=0, stratify=labels)
    np.testing.assert_array_equal(split.x_test, x_test)  # the test rows of every figure before the split
    np.testing.assert_array_equal(split.y_test, y_test)
    assert (len(split.x_fit), len(split.x_val), len(split.x_test)) == (1005, 252, 540)
    rows = [tuple(r) for part in (split.x_fit, split.x_val, split.x_test) for r in part]
    assert sorted(rows) == sorted(tuple(r) for r in features)  # every digit once
    # stratified: each class's share of the validation rows within one row of its share of the fit rows
    for digit in range(10):
        assert abs(np.sum(split.y_val == digit) - np.sum(split.y_fit == digit) * 252 / 1005) <= 1
    halved = split.features(lambda x: x / 2)
    np.testing.assert_array_equal(halved.x_val, split.x_val / 2)
    assert halved.y_fit is split.y_fit


# (script, layers cell, bound on the default (pq) drop, on the tree drop): measured drops 0.37 and 1.67 points for
# the 1-D CNN, 1.11 and 1.85 for the ViT (2 / 9 and 6 / 10 of 540 test digits, docs/examples.md); the bounds leave a
# few digits for another machine's float sums in training (over training seeds 0-4 the CNN's drops spread
# 0.37-2.04 and 1.67-2.78, benchmarks/seed_spread.py).
TORCH_EXAMPLES = [("digits_conv1d.py", "4 of 4", 2.0, 2.5), ("digits_vit.py", "13 of 13", 1.5, 2.5)]


@pytest.mark.parametrize("script,layers,pq_bound,tree_bound", TORCH_EXAMPLES, ids=["conv1d", "vit"])
def test_torch_example_quick_run_converts_every_layer(tmp_path, script, layers, pq_bound, tree_bound):
    """The torch-trained 1-D CNN (three Conv1d and a Linear) and vision transformer (4 weight MatMuls per block and
    the head; the embedding and the attention products stay): every eligible layer converted, accuracy kept."""
    pytest.importorskip("torch", reason="the example trains in torch: pip install -e '.[test]'")
    pytest.importorskip("onnxscript", reason="torch.onnx's default exporter needs onnxscript: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = _table_rows(result.stdout)
    assert set(rows) == {"default", "--encoder tree"}
    for setting, cell, original, converted, drop in rows.values():
        assert cell == layers and float(original) > 95
        assert float(drop) == pytest.approx(float(original) - float(converted), abs=0.011)
    assert float(rows["default"][4]) <= pq_bound and float(rows["--encoder tree"][4]) <= tree_bound


@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
def test_ppocr_rec_quick_conversion(ppocr, tmp_path, float16):
    import onnx
    import ppocr_rec

    info, results = ppocr_rec.run(tmp_path, quick=True, float16=float16)
    assert info["cer"] < 0.02 and info["layers"] == 9
    weights = [t for t in onnx.load(info["model"]).graph.initializer if t.dims and len(t.dims) == 2]
    assert {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16 if float16 else onnx.TensorProto.FLOAT}
    (default,) = results
    assert default["setting"] == "default" and default["layers"] == info["layers"]
    # Measured 0.00 % CER and 99.24 % agreement (docs/examples.md): a few wrong characters at most.
    assert default["cer_converted"] < 0.01 and default["agreement"] > 0.97



# ------------------------------------------------------------------------------------------------ Magika
@pytest.fixture(scope="module")
def magika_data():
    pytest.importorskip("magika", reason="the Magika example's model ships in magika: pip install -e '.[test]'")
    import magika_data

    return magika_data


def _python_files(magika_data, limit: int) -> list[Path]:
    """Files of Python's own library of varied kinds, in a fixed order."""
    root = magika_data.python_library()
    return [p for p in sorted(root.glob("**/*"))[:4000] if p.is_file() and not p.is_symlink()][:limit]


def test_magika_features_give_magikas_own_labels(magika_data):
    """Our feature extraction through the shipped model gives, file for file, the label Magika's public API reports
    as its model's (``prediction.dl``); files Magika labels without its model are the ones we skip."""
    from magika import Magika

    config = magika_data.load_config()
    paths = _python_files(magika_data, 120)
    results = Magika().identify_paths(paths)
    rows, expected = [], []
    for path, result in zip(paths, results):
        row = magika_data.features(path, config)
        if row is None:
            assert str(result.prediction.dl.label) == "undefined", path
            continue
        rows.append(row)
        expected.append(str(result.prediction.dl.label))
    assert len(rows) >= 100
    labels = magika_data.labels_of(example_tools.session(magika_data.model_path()), np.stack(rows))
    assert [config.labels[k] for k in labels] == expected


def test_magika_features_of_edge_cases(magika_data, tmp_path):
    """Whitespace stripped at both ends, short files padded, a file too short after stripping skipped; compared
    with Magika's own labels for the same files."""
    from magika import Magika

    config = magika_data.load_config()
    cases = {
        "padded.py": b"\n\n   import os\nprint(os.getcwd())\n   \n\n",
        "long.txt": b"  " + b"the quick brown fox jumps over the lazy dog. " * 300 + b"\n\n",
        "short": b"  \n  ab  \n",
        "binary.bin": bytes(range(256)) * 40,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    row = magika_data.features(tmp_path / "padded.py", config)
    # the start loses its leading whitespace only, the end its trailing whitespace only
    beg, end = cases["padded.py"].lstrip(), cases["padded.py"].rstrip()
    assert list(row[: len(beg)]) == list(beg) and np.all(row[len(beg) : config.beg_size] == config.padding_token)
    assert list(row[-len(end) :]) == list(end) and np.all(row[config.beg_size : -len(end)] == config.padding_token)
    long = magika_data.features(tmp_path / "long.txt", config)
    assert long[0] == ord("t") and long[-1] == ord(".") and not np.any(long == config.padding_token)
    assert magika_data.features(tmp_path / "short", config) is None
    session = example_tools.session(magika_data.model_path())
    for name in cases:
        result = Magika().identify_path(tmp_path / name)
        row = magika_data.features(tmp_path / name, config)
        ours = "undefined" if row is None else config.labels[magika_data.labels_of(session, row[None])[0]]
        assert ours == str(result.prediction.dl.label), name


def test_magika_corpus_is_split_by_content_and_capped_per_extension(magika_data):
    corpus = magika_data.make_corpus(60, 60, [magika_data.python_library()], per_type=10)
    both = np.concatenate([corpus.calib, corpus.evaluation])
    assert len({row.tobytes() for row in both}) == 120  # distinct files, no file on both sides
    suffixes = [p.suffix.lower() for p in corpus.eval_paths]
    assert max(suffixes.count(s) for s in set(suffixes)) <= 10
    again = magika_data.make_corpus(60, 60, [magika_data.python_library()], per_type=10)
    assert again.eval_paths == corpus.eval_paths and np.array_equal(again.calib, corpus.calib)
    truth = corpus.truth(magika_data.load_config())
    labels = magika_data.load_config().labels
    for path, k in zip(corpus.eval_paths, truth):
        if path.suffix == ".py":
            assert labels[k] == "python"


def test_magika_quick_run(magika_data, tmp_path):
    """Magika's three layers convert and run; the labels measured against the original's."""
    result = subprocess.run([sys.executable, str(EXAMPLES / "magika_filetype.py"), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0].strip(): line.split() for line in result.stdout.splitlines()
            if line.startswith(("original ", "default "))}
    original, default = rows["original"], rows["default"]
    # the original on its own files: the extension's label for nearly all (97.2 % measured)
    assert float(original[-2]) == 100.0 and float(original[-1]) > 90
    assert default[1] == "3"
    # Measured 69.9 % agreement (docs/examples.md): the convolution's error changes many labels. A regression
    # guard at the measured level, not a claim of accuracy.
    assert 60 <= float(default[-2]) < 100
