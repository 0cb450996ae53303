"""Regenerate tests/golden/anomalydino/ from the official AnomalyDINO and DINOv2 code.

Needs two folders made with `git archive` of the fetched repositories (never copied into this
one): github dammsi/AnomalyDINO (``--anomalydino``) and github facebookresearch/dinov2
(``--dinov2``), plus ``faiss-cpu``. Runs the official ``run_anomaly_detection`` itself on a small
MVTec-layout set written to a temporary folder, with three things replaced so that it runs on a
CPU without network: torch.hub.load builds ``dinov2_vits14`` from the local DINOv2 folder
(``source="local", pretrained=False``) and its weights are ``clipad.model.dinov2.random_state``
(seeded per name: the test rebuilds the same tensors), CUDA synchronisation is a no-op, and the
nearest-neighbour index is faiss's CPU ``IndexFlatL2`` (``faiss_on_cpu=True``). The maps are the
official ``dists2map`` of the saved patch distances.

Writes: the images (PNG, 224 x 280: smaller edge = the resolution, both sides multiples of 14,
so the official resize is the identity and the map is at the image size), ``golden.npz`` (per
configuration and test image: the image score, the patch distances [16, 20], the map sampled
every 4th pixel [56, 70]; per test image the official foreground mask and the first principal
component of an exact SVD in float64, sign by scikit-learn's rule) and ``golden.json`` (the
commits, versions, seed and configurations). CI compares clipad against these files
(tests/test_anomalydino.py) without the official code.

    git --git-dir=MIRROR/dammsi+AnomalyDINO/repo archive HEAD | tar -x -C /tmp/adino
    git --git-dir=MIRROR/dammsi+AnomalyDINO/repo rev-parse HEAD > /tmp/adino/COMMIT
    (the same for facebookresearch/dinov2 into /tmp/dinov2), then
    python scripts/anomalydino_golden.py --anomalydino /tmp/adino --dinov2 /tmp/dinov2

Takes about 3 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (224, 280)  # H, W
RESOLUTION = 224
SEED = 0
BACKBONE = "dinov2_vits14"
SHOTS = 2
MAP_STRIDE = 4
CONFIGS = {  # name -> (masking, rotation)
    "plain": (False, False),
    "masked": (True, False),
    "rotated": (False, True),
    "masked_rotated": (True, True),
}
OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "anomalydino"
IMAGES = {  # file -> (split folder, image seed, defect)
    "train_good_000.png": ("train/good", 0, False),
    "train_good_001.png": ("train/good", 1, False),
    "test_good_000.png": ("test/good", 2, False),
    "test_scratch_000.png": ("test/scratch", 3, True),
    "test_scratch_001.png": ("test/scratch", 4, True),
}


def part_image(seed: int, defect: bool) -> np.ndarray:
    """A synthetic part: a striped ellipse (about 28% of the image) on a dark, graded, noisy
    background; ``defect``: a dark bar across it. uint8 RGB [224, 280, 3]."""
    h, w = SIZE
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.broadcast_to(np.array([40.0, 50.0, 60.0]), (h, w, 3)) + (xx / w * 30)[..., None]
    img = img + r.normal(0, 6, (h, w, 1))
    cy, cx = h / 2 + r.integers(-8, 9), w / 2 + r.integers(-8, 9)
    inside = ((yy - cy) / 70) ** 2 + ((xx - cx) / 90) ** 2 < 1
    stripes = (180 + 30 * np.sin(xx / 5.0 + r.uniform(0, 6)))[..., None] * np.array([1.0, 0.8, 0.5])
    img = np.where(inside[..., None], stripes + r.normal(0, 5, (h, w, 3)), img)
    if defect:
        y0, x0 = int(cy) + r.integers(-20, 21), int(cx) + r.integers(-40, 1)
        img[y0 - 5 : y0 + 5, x0 : x0 + 50] = 20
    return np.clip(img, 0, 255).astype(np.uint8)


def exact_first_component(f: np.ndarray) -> np.ndarray:
    """float64 SVD of the centred features [N, W]; sign: the component's largest-magnitude entry
    positive (scikit-learn's ``svd_flip(u_based_decision=False)``) -> [N]."""
    c = f.astype(np.float64) - f.astype(np.float64).mean(axis=0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    v = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])
    return c @ v


def git_commit(folder: Path) -> str:
    head = folder / "COMMIT"
    return head.read_text().strip() if head.is_file() else "unknown (write the commit to FOLDER/COMMIT)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--anomalydino", type=Path, required=True, help="git archive of dammsi/AnomalyDINO")
    p.add_argument("--dinov2", type=Path, required=True, help="git archive of facebookresearch/dinov2")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()

    import sklearn
    import torch

    from clipad.model.dinov2 import random_state

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    hub_load = torch.hub.load
    state = random_state(BACKBONE, SEED)

    def local_hub(repo: str, name: str, *a: object, **k: object) -> torch.nn.Module:
        model = hub_load(str(args.dinov2), name, source="local", pretrained=False)
        model.load_state_dict(state, strict=True)
        return model

    torch.hub.load = local_hub
    torch.cuda.synchronize = lambda *a, **k: None  # the official timing synchronises unconditionally
    sys.modules.setdefault("tifffile", types.ModuleType("tifffile"))  # imported, unused without save_tiffs
    sys.path.insert(0, str(args.anomalydino))
    from src.backbones import get_model  # the official code, from the archive folder
    from src.detection import run_anomaly_detection
    from src.utils import dists2map

    args.out.mkdir(parents=True, exist_ok=True)
    model = get_model(BACKBONE, "cpu", smaller_edge_size=RESOLUTION)

    extract, mask_fn = model.extract_features, model.compute_background_mask

    def recording_mask(f: np.ndarray, grid: tuple[int, int], threshold: float = 10, masking_type: bool = False):
        m = mask_fn(f, grid, threshold, masking_type)
        if masking_type:
            recording_mask.masks.append((f, m))
        return m

    recording_mask.masks = []
    model.compute_background_mask = recording_mask

    golden: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for name, (split, seed, defect) in IMAGES.items():
            img = part_image(seed, defect)
            Image.fromarray(img).save(args.out / name)
            (root / "part" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "part" / split / name)
        tests = [n for n in IMAGES if n.startswith("test_")]
        for cname, (masking, rotation) in CONFIGS.items():
            np.random.seed(SEED)  # scikit-learn's randomized PCA draws from the global generator
            recording_mask.masks = []
            plots = Path(tmp) / cname
            scores, _, _ = run_anomaly_detection(
                model,
                "part",
                data_root=str(root),
                n_ref_samples=SHOTS,
                object_anomalies={"part": ["scratch"]},
                plots_dir=str(plots),
                masking=masking,
                rotation=rotation,
                faiss_on_cpu=True,
                seed=0,
                save_patch_dists=True,
            )
            for name in tests:
                split = IMAGES[name][0].split("/")[1]
                grid = np.load(plots / "anomaly_maps" / "seed=0" / "part" / "test" / split / (name[:-4] + ".npy"))
                amap = dists2map(grid, SIZE + (3,))
                golden[f"{cname}/{name}/score"] = np.float64(scores[f"{split}/{name}"])
                golden[f"{cname}/{name}/dists"] = grid.astype(np.float64)
                golden[f"{cname}/{name}/map"] = amap[::MAP_STRIDE, ::MAP_STRIDE].astype(np.float64)
            if masking:  # each test image's official mask, found by its features
                for name in tests:
                    img = np.asarray(Image.open(args.out / name).convert("RGB"))
                    t, _ = model.prepare_image(img)
                    f = extract(t)
                    hit = [m for g, m in recording_mask.masks if g.shape == f.shape and np.array_equal(g, f)]
                    assert len(hit) == 1, f"no unique official mask recorded for {name}"
                    golden[f"mask/{name}"] = hit[0].astype(np.uint8)
                    golden[f"pc/{name}"] = exact_first_component(f)
    np.savez_compressed(args.out / "golden.npz", **golden)
    meta = {
        "anomalydino_commit": git_commit(args.anomalydino),
        "dinov2_commit": git_commit(args.dinov2),
        "versions": {"torch": torch.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__},
        "backbone": BACKBONE,
        "weights": f"clipad.model.dinov2.random_state(backbone, seed={SEED})",
        "size": list(SIZE),
        "resolution": RESOLUTION,
        "shots": SHOTS,
        "map_stride": MAP_STRIDE,
        "configs": {k: {"masking": m, "rotation": r} for k, (m, r) in CONFIGS.items()},
        "references": [n for n in IMAGES if n.startswith("train_")],
        "tests": [n for n in IMAGES if n.startswith("test_")],
    }
    (args.out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {len(golden)} arrays to {args.out}")


if __name__ == "__main__":
    main()
