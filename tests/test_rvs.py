"""RVS methods on constructed vectors with known answers, and the prompt ensembles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipad.core.errors import ClipadError
from clipad.model.prompts import PROMPT_SETS, TEMPLATES, load_prompt_set
from clipad.model.rvs import dbscan_params, representative_vector, text_vectors

FP16_TOL = 2e-3


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def cluster(centre, n, spread, rng):
    return unit(centre[None, :] + spread * rng.normal(size=(n, centre.size)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_mean_is_normalised_row_mean(rng):
    e = unit(rng.normal(size=(30, 16)))
    r = representative_vector(e, "mean")
    np.testing.assert_allclose(r.vector, unit(e.mean(0)), rtol=1e-6, atol=1e-7)
    assert r.used == "mean" and abs(np.linalg.norm(r.vector) - 1) < 1e-6


def test_pca_centres_each_prompt_over_channels(rng):
    """Identical rows have zero variance across prompts, so textbook PCA has no direction;
    the official routine returns the channel-centred row itself: (e - mean(e)) / |e - mean(e)|."""
    e0 = unit(rng.normal(size=16) + 0.5)
    e = np.repeat(e0[None], 12, axis=0)
    expected = unit(e0 - e0.mean())
    np.testing.assert_allclose(representative_vector(e, "pca").vector, expected, atol=FP16_TOL)


def test_pca_is_top_singular_vector_with_sign_fix(rng):
    e = cluster(unit(rng.normal(size=32)), 40, 0.3, rng)
    xc = e.T - e.T.mean(axis=0, keepdims=True)  # [D, N], each column centred
    u = np.linalg.svd(xc, full_matrices=False)[0][:, 0]
    if np.dot(e.mean(0), u) < 0:
        u = -u
    np.testing.assert_allclose(representative_vector(e, "pca").vector, u, atol=FP16_TOL)


def test_kde_weights_by_density(rng):
    """Two far-apart groups of identical points: density weights are the group fractions."""
    a, b = unit(np.eye(16)[0]), unit(np.eye(16)[5])  # orthogonal: distance sqrt(2) >> bandwidth 0.3
    k, m = 12, 4
    e = np.vstack([np.repeat(a[None], k, 0), np.repeat(b[None], m, 0)])
    expected = unit(k * k * a + m * m * b)  # sum_i w_i e_i with w proportional to group size
    np.testing.assert_allclose(representative_vector(e, "kde").vector, expected, atol=FP16_TOL)


def test_dbscan_takes_largest_cluster_mean(rng):
    base = unit(rng.normal(size=(2, 64)))
    big = cluster(base[0], 20, 0.02, rng)
    small = cluster(base[1], 16, 0.02, rng)
    noise = unit(rng.normal(size=(5, 64)))
    e = np.vstack([small, noise, big])
    r = representative_vector(e, "dbscan", "mvtec")
    np.testing.assert_allclose(r.vector, unit(big.mean(0)), atol=FP16_TOL)
    assert r.used == "dbscan" and r.note is None


def test_dbscan_visa_profile_and_params():
    assert dbscan_params("visa") == (1.5, 25)
    assert dbscan_params("mvtec") == dbscan_params("headct") == (0.5, 15)


def test_dbscan_visa_profile_joins_everything(rng):
    """eps 1.5 <=> cos > -0.125: two clusters 90 degrees apart merge into one."""
    base = unit(np.eye(32)[:2])
    e = np.vstack([cluster(base[0], 20, 0.02, rng), cluster(base[1], 16, 0.02, rng)])
    np.testing.assert_allclose(representative_vector(e, "dbscan", "visa").vector, unit(e.mean(0)), atol=FP16_TOL)


def test_dbscan_all_noise_falls_back_to_mean(rng):
    e = unit(rng.normal(size=(30, 64)))  # random 64-d unit vectors: cos ~ 0 < 0.875
    r = representative_vector(e, "dbscan", "mvtec")
    assert r.used == "mean" and "noise" in r.note
    np.testing.assert_allclose(r.vector, unit(e.mean(0)), rtol=1e-6, atol=1e-7)


def test_mean_shift_equals_mean_on_unit_vectors(rng):
    e = np.vstack([cluster(unit(rng.normal(size=16)), 10, 0.05, rng), unit(rng.normal(size=(5, 16)))])
    np.testing.assert_allclose(representative_vector(e, "mean_shift").vector, unit(e.mean(0)), atol=FP16_TOL)


def test_fp16_methods_are_rounded_to_fp16(rng):
    e = cluster(unit(rng.normal(size=64)), 20, 0.02, rng)
    v = representative_vector(e, "dbscan").vector
    assert np.array_equal(v, v.astype(np.float16).astype(np.float32))


def test_official_prompt_counts_and_order():
    normal, abnormal = PROMPT_SETS["industrial"].sentences("metal_nut")
    assert len(normal) == 9 * 22 and len(abnormal) == 10 * 22
    assert normal[0] == "a cropped photo of the flawless metal_nut."  # verbatim name, state-major
    assert normal[22] == "a cropped photo of the perfect metal_nut."
    assert abnormal[-1] == "a photo of a metal_nut with contamination for anomaly detection."
    assert len(TEMPLATES) == 22


def test_medical_presets():
    normal = PROMPT_SETS["polyp"].normal
    assert not any("scratch" in s or "crack" in s for s in normal)
    assert normal[-2:] == ("{} without polypus", "{} without polyp")
    assert PROMPT_SETS["hemorrhage"].abnormal[-1] == "{} with hemorrhage"
    assert len(PROMPT_SETS["tumor"].normal) == 8


def test_prompt_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("normal: ['good {}']\nabnormal: ['bad {}', '{} with a dent']\ntemplates: ['a photo of a {}.']\n")
    ps = load_prompt_set(str(p))
    assert ps.sentences("gear") == (
        ["a photo of a good gear."],
        ["a photo of a bad gear.", "a photo of a gear with a dent."],
    )
    q = tmp_path / "mine.json"
    q.write_text(json.dumps({"normal": ["ok {}"], "abnormal": ["bad {}"]}))
    assert len(load_prompt_set(str(q)).templates) == 22
    q.write_text(json.dumps({"normal": ["ok"], "abnormal": ["bad {}"]}))
    with pytest.raises(ClipadError, match="exactly one"):
        load_prompt_set(str(q))
    with pytest.raises(ClipadError, match="unknown prompt set"):
        load_prompt_set("nope")


def test_text_vectors_shape_and_columns(tiny):
    tv = text_vectors(tiny.clip, tiny.tokenizer, "bottle", method="mean")
    dim = tiny.clip.visual.proj.shape[1]
    assert tv.matrix.shape == (dim, 2) and tv.matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(tv.matrix, axis=0), 1, rtol=1e-5)
    # column 0 normal, column 1 abnormal: recompute the normal column directly
    import torch

    normal, _ = PROMPT_SETS["industrial"].sentences("bottle")
    with torch.no_grad():
        emb = tiny.clip.encode_text(tiny.tokenizer(normal)).double().numpy()
    np.testing.assert_allclose(tv.matrix[:, 0], unit(unit(emb).mean(0)), rtol=1e-4, atol=1e-5)
