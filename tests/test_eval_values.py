"""`clipad eval` numbers against an independent recomputation.

The CLI runs end to end on the synthetic set; the check side reads every image and mask itself
with PIL (squash resize with bicubic for the RGB PNGs, masks binarised / bilinear-resized /
thresholded at 0.5, as the README documents), labels them from their folder names, runs the
reference SDP model (text vectors and SDPModel built through the library's public functions,
the same random tiny weights as ``--seed 1``) on them, and computes the metrics with
scikit-learn. A corrupt image checks that the skipped file takes neither a label nor a mask with it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from clipad.model.prompts import PROMPT_SETS
from clipad.model.rvs import text_vectors
from clipad.model.sdp import SDPModel
from tests.helpers import run

TINY_SEED1 = ["--model", "clipad-tiny", "--random-weights", "--seed", "1", "--quiet"]  # the `tiny` fixture's weights
SIGMA = 8.0  # README: --sigma defaults to 8 for SDP
TOL = 1e-6


def own_image(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def own_mask(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        binary = (np.asarray(im) > 0).astype(np.uint8) * 255
    resized = np.asarray(Image.fromarray(binary, mode="L").resize((size, size), Image.Resampling.BILINEAR))
    return resized >= 128  # /255 > 0.5


def samples(cat_dir: Path, skip: set[str] = frozenset()) -> list[tuple[Path, int, Path | None]]:
    """(image, label, mask) of a category in the MVTec layout, from the folder names alone."""
    out = []
    for img in sorted(cat_dir.glob("test/*/*.png")):
        if str(img) in skip:
            continue
        defect = img.parent.name
        mask = None if defect == "good" else cat_dir / "ground_truth" / defect / f"{img.stem}_mask.png"
        out.append((img, int(defect != "good"), mask))
    return out


_TEXT: dict[str, np.ndarray] = {}


def text_matrix(tiny, cat: str) -> np.ndarray:
    """The category's text vectors (README defaults: dbscan, MVTec profile, industrial prompts)."""
    if cat not in _TEXT:
        _TEXT[cat] = text_vectors(tiny.clip, tiny.tokenizer, cat, "dbscan", "mvtec", PROMPT_SETS["industrial"]).matrix
    return _TEXT[cat]


@torch.no_grad()
def recompute(tiny, cat_dir: Path, skip: set[str] = frozenset()) -> dict:
    size = tiny.image_size
    items = samples(cat_dir, skip)
    model = SDPModel(
        tiny.clip.visual, torch.from_numpy(text_matrix(tiny, cat_dir.name)), size, SIGMA, None, tiny.mean, tiny.std
    )
    x = torch.from_numpy(np.stack([own_image(p, size) for p, _, _ in items]))
    amap, prob = (t.numpy().astype(np.float64) for t in model(x))
    labels = np.array([lab for _, lab, _ in items])
    masks = np.stack([np.zeros((size, size), bool) if m is None else own_mask(m, size) for _, _, m in items])
    mmax = amap.reshape(len(amap), -1).max(1)
    fused = (prob - prob.min()) / (prob.max() - prob.min()) + (mmax - mmax.min()) / (mmax.max() - mmax.min())
    return {
        "labels": labels,
        "prob": prob,
        "mmax": mmax,
        "fused": fused,
        "maps": amap,
        "masks": masks,
        "image_auroc": roc_auc_score(labels, fused),
        "image_ap": average_precision_score(labels, fused),
        "prob_auroc": roc_auc_score(labels, prob),
        "prob_ap": average_precision_score(labels, prob),
        "pixel_auroc": roc_auc_score(masks.ravel(), amap.ravel()),
        "pixel_ap": average_precision_score(masks.ravel(), amap.ravel()),
        "n": len(items),
    }


def check_category(entry: dict, ref: dict) -> None:
    assert entry["n_images"] == ref["n"]
    assert entry["image"]["auroc"] == pytest.approx(ref["image_auroc"], abs=TOL)
    assert entry["image"]["ap"] == pytest.approx(ref["image_ap"], abs=TOL)
    assert entry["image_prob"]["auroc"] == pytest.approx(ref["prob_auroc"], abs=TOL)
    assert entry["image_prob"]["ap"] == pytest.approx(ref["prob_ap"], abs=TOL)
    assert entry["pixel"]["auroc"] == pytest.approx(ref["pixel_auroc"], abs=TOL)
    assert entry["pixel"]["ap"] == pytest.approx(ref["pixel_ap"], abs=TOL)


def swap_shows(ref: dict) -> bool:
    """Whether the fused and the raw-prob image scores give different numbers here (so that
    swapping the `image` and `image_prob` entries, or fusing wrongly, shows)."""
    return abs(ref["image_auroc"] - ref["prob_auroc"]) > 1e-3 or abs(ref["image_ap"] - ref["prob_ap"]) > 1e-3


def discriminates(ref: dict) -> None:
    """Preconditions that make the comparisons able to fail: a wrong label assignment, or masks
    taken one image off, move the numbers."""
    flipped = ref["labels"].copy()
    i, j = int(np.argmax(flipped == 0)), int(np.argmax(flipped == 1))
    flipped[[i, j]] = flipped[[j, i]]  # one good and one anomalous image trade labels
    assert roc_auc_score(flipped, ref["fused"]) != pytest.approx(ref["image_auroc"], abs=1e-3) or roc_auc_score(
        flipped, ref["prob"]
    ) != pytest.approx(ref["prob_auroc"], abs=1e-3)
    anomalous = ref["masks"][ref["labels"] == 1]
    assert all(0 < m.sum() < m.size for m in anomalous) and not ref["masks"][ref["labels"] == 0].any()
    rolled = np.roll(ref["masks"], 1, axis=0)  # every mask one image off
    assert abs(roc_auc_score(rolled.ravel(), ref["maps"].ravel()) - ref["pixel_auroc"]) > 1e-3


@pytest.fixture(scope="module")
def evaluated(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "r.json"
    code = run_cli("eval", "--dataset", "mvtec", "--root", synth_root, "--out", out, *TINY_SEED1)
    assert code == 0
    return json.loads(out.read_text())


def run_cli(*args) -> int:
    from clipad import cli

    return cli.run([str(a) for a in args])


@pytest.fixture(scope="module")
def refs(synth_root, tiny):
    return {c: recompute(tiny, synth_root / c) for c in ("fabric", "washer")}


@pytest.mark.parametrize("cat", ["fabric", "washer"])
def test_eval_values_equal_an_independent_recomputation(evaluated, refs, cat):
    ref = refs[cat]
    discriminates(ref)
    entry = evaluated[cat]
    check_category(entry, ref)
    assert entry["n_skipped"] == 0 and entry["skipped"] == []
    assert ref["n"] == 7 and ref["labels"].sum() == 4  # 3 good, 2 scratch + 2 spot


def test_the_set_tells_fused_from_raw_prob(refs):
    """At least one category where the fused score and image_prob give different figures, so a
    swap of the `image` and `image_prob` entries fails the test above."""
    assert any(swap_shows(r) for r in refs.values())


def test_eval_mean_is_the_mean_over_categories(evaluated, refs):
    refs = list(refs.values())
    m = evaluated["mean"]
    assert m["n_images"] == 14 and m["n_skipped"] == 0
    assert m["image"]["auroc"] == pytest.approx(np.mean([r["image_auroc"] for r in refs]), abs=TOL)
    assert m["image_prob"]["auroc"] == pytest.approx(np.mean([r["prob_auroc"] for r in refs]), abs=TOL)
    assert m["pixel"]["auroc"] == pytest.approx(np.mean([r["pixel_auroc"] for r in refs]), abs=TOL)


def test_results_json_round_trips(evaluated):
    """results.json reads back into typed records and writes the same bytes (keys in order); the mean
    recomputed from the categories is the one written."""
    from clipad.evaluation.results import CategoryResult, EvalResults

    results = EvalResults.from_json(evaluated)
    assert json.dumps(results.to_json()) == json.dumps(evaluated)
    assert list(results.categories) == ["fabric", "washer"]
    assert isinstance(results.mean, CategoryResult) and results.mean.skipped is None
    assert results.categories["fabric"].rvs is not None and results.categories["fabric"].shots is None
    table = results.describe().splitlines()
    assert table[0].startswith("category") and table[-1].startswith("mean")


def test_shot_results_round_trip_and_show_their_spread():
    """The normal-reference entries (``shots``) survive the round trip and add a spread line each."""
    from clipad.evaluation.results import EvalResults

    metrics = {"auroc": 0.9, "f1_max": 0.8, "ap": 0.7}
    entry = {
        "image": metrics,
        "pixel": {**metrics, "aupro": 0.6},
        "image_prob": metrics,
        "n_images": 5,
        "n_skipped": 0,
        "skipped": [],
        "notes": ["a note"],
        "rvs": {"method": "mean", "notes": []},
        "shots": {
            "k": 2,
            "seeds": [0, 1],
            "mode": "reference",
            "std": {"image": {"auroc": 0.01}, "pixel": {"auroc": None}},
        },
    }
    data = {
        "a": entry,
        "mean": {
            "image": metrics,
            "pixel": {**metrics, "aupro": 0.6},
            "image_prob": metrics,
            "n_images": 5,
            "n_skipped": 0,
        },
    }
    results = EvalResults.from_json(data)
    assert results.to_json() == data
    assert (
        results.describe().splitlines()[-1]
        == "a: K=2 over seeds 0,1 (reference): image AUROC 90.0 +- 1.0, pixel AUROC 90.0 +- 0.0"
    )
    assert results.notes() == ["note: a: a note"]  # not written anywhere yet


@pytest.mark.parametrize("broken", ["fabric/test/scratch/000.png", "fabric/test/good/001.png"])
def test_skipped_image_takes_its_label_and_mask_with_it(synth_root, tiny, tmp_path, capsys, broken):
    """One unreadable image (an anomalous one, whose mask must then be left out too, or a good
    one between anomalous categories): the remaining images keep their own labels and masks."""
    root = tmp_path / "d"
    shutil.copytree(synth_root, root)
    (root / broken).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "r.json"
    code, _, err = run(
        capsys, "eval", "--dataset", "mvtec", "--root", root, "--categories", "fabric", "--out", out, *TINY_SEED1
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    ref = recompute(tiny, root / "fabric", skip={str(root / broken)})
    discriminates(ref)
    assert swap_shows(ref)
    entry = res["fabric"]
    check_category(entry, ref)
    assert entry["n_images"] == 6 and entry["n_skipped"] == 1 and res["mean"]["n_skipped"] == 1
    assert len(entry["skipped"]) == 1 and broken in entry["skipped"][0]
