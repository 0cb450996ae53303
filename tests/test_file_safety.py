"""The file-safety rule: a command writes only into a folder it created (or an empty one) and
never deletes a file it did not write; its staging folders are recognised by their full name;
side outputs are staged before the swap; a re-run or a killed run never mixes two runs' files.
Real processes, real files and the tiny model's artifacts (conftest's ``art``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

from clipad.data.synth import sample_images
from clipad.deploy.artifacts import load_artifacts
from tests.helpers import TINY, assert_one_line_error, run

SMALL_SYNTH = ("--n-train", "0", "--n-good", "1", "--n-defect", "1")


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below ``root`` (links as their target's text)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "-> " + os.readlink(p)
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_art(art, dst: Path) -> Path:
    shutil.copytree(art.root, dst)
    return dst


def clipad(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipad", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )


def write_images(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(sample_images(n, seed=seed)):
        cv2.imwrite(str(folder / f"x{i:03d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    return folder


# --- synth -----------------------------------------------------------------------------------------


def test_synth_force_on_the_current_folder_keeps_the_users_files(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.csv").write_text("1,2")
    before = tree(tmp_path)
    proc = clipad("synth", "--out", ".", "--force", *SMALL_SYNTH, cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "--out")
    assert tree(tmp_path) == before


def test_synth_force_replaces_only_its_own_dataset(tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run(capsys, "synth", "--out", out, *SMALL_SYNTH)
    assert code == 0, err
    code, _, err = run(capsys, "synth", "--out", out, *SMALL_SYNTH)
    assert_one_line_error(code, err, "use --force")
    code, _, err = run(capsys, "synth", "--out", out, *SMALL_SYNTH, "--seed", "3", "--force")
    assert code == 0, err  # its own dataset: replaced
    (out / "fabric" / "notes.txt").write_text("mine")
    before = tree(out)
    code, _, err = run(capsys, "synth", "--out", out, *SMALL_SYNTH, "--force")
    assert_one_line_error(code, err, "clipad did not write (fabric/notes.txt)")
    assert tree(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.png").write_text("not clipad's")
    code, _, err = run(capsys, "synth", "--out", other, *SMALL_SYNTH, "--force")
    assert_one_line_error(code, err, "was not written by clipad")
    assert (other / "x.png").read_text() == "not clipad's"


# --- demo ------------------------------------------------------------------------------------------


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    d = tmp_path / "d"
    (d / "data").mkdir(parents=True)
    (d / "data" / "mine.csv").write_text("keep")
    (d / "report.md").write_text("my report")
    (d / "predictions").mkdir()
    before = tree(d)
    code, _, err = run(capsys, "demo", "--out", d, "--frames", "2", "--quiet")
    assert_one_line_error(code, err, "was not written by clipad")
    assert tree(d) == before


# --- export ----------------------------------------------------------------------------------------


def test_export_never_replaces_a_folder_of_the_users(art, tmp_path, capsys):
    """A file named manifest.json does not make an artifact directory; a real one with a file of
    the user's in it is not replaced either."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text('{"mine": true}')
    (fake / "notes.txt").write_text("keep")
    real = copy_art(art, tmp_path / "real")
    (real / "notes.txt").write_text("keep")
    for out in (fake, real):
        before = tree(out)
        code, _, err = run(capsys, "export", "--category", "washer", "--precision", "fp32", "--out", out, *TINY)
        assert_one_line_error(code, err, str(out))
        assert tree(out) == before


def test_a_failing_triton_repo_leaves_the_old_export(art, tmp_path, capsys):
    out = copy_art(art, tmp_path / "art")
    before = tree(out)
    (tmp_path / "repo-file").write_text("a file where the repository belongs")
    mine = tmp_path / "repo" / "washer_onnx"
    mine.mkdir(parents=True)
    (mine / "config.pbtxt").write_text("# mine")
    for repo in (tmp_path / "repo-file", tmp_path / "repo"):
        args = ("--precision", "fp32", "--seed", "5", "--triton-repo", repo)
        code, _, err = run(capsys, "export", "--category", "washer", "--out", out, *args, *TINY)
        assert_one_line_error(code, err, "--triton-repo")
        assert tree(out) == before  # the old calibration and graphs are all there
    assert (mine / "config.pbtxt").read_text() == "# mine"
    assert not [p.name for p in tmp_path.rglob("*") if ".partial-" in p.name]  # nothing staged is left
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["washer_onnx"]


def test_only_a_dead_process_own_staging_folder_is_removed(art, tmp_path, capsys):
    out = tmp_path / "art"
    for name in ("art.partial-mine", "art.partial-12x", "art.partial-1-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "export", "--category", "washer", "--precision", "fp32", "--out", out, *TINY)
    assert code == 0, err
    for name in ("art.partial-mine", "art.partial-12x", "art.partial-1-2"):
        assert (tmp_path / name / "keep.txt").read_text() == "mine", name


def test_a_symlinked_out_is_written_through(art, tmp_path, capsys):
    target = copy_art(art, tmp_path / "v1")
    link = tmp_path / "current"
    link.symlink_to("v1")
    code, _, err = run(
        capsys, "export", "--category", "washer", "--precision", "fp32", "--seed", "5", "--out", link, *TINY
    )
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == "v1"
    assert load_artifacts(target).manifest.weights.seed == 5  # the new export, in the link's target
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --- predict ---------------------------------------------------------------------------------------


def test_predict_fails_when_no_image_could_be_read(art, tmp_path, capsys):
    src = tmp_path / "broken"
    src.mkdir()
    for name in ("a.png", "b.jpg"):
        (src / name).write_bytes(b"not an image")
    out = tmp_path / "p"
    code, _, err = run(capsys, "predict", src, "--artifacts", art.root, "--out", out, "--quiet")
    assert_one_line_error(code, err, "none of the 2 images")
    assert not out.exists()


def test_a_predict_rerun_leaves_no_earlier_maps(art, tmp_path, capsys):
    images = write_images(tmp_path / "imgs", 3)
    out = tmp_path / "p"
    code, _, err = run(capsys, "predict", images, "--artifacts", art.root, "--out", out, "--save-maps", "--quiet")
    assert code == 0, err
    one = images / "x000.png"
    code, _, err = run(capsys, "predict", one, "--artifacts", art.root, "--out", out, "--save-maps", "--quiet")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["files"]["map"] for r in records] == ["maps/x000.npy"]
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["x000.npy"]


def test_a_killed_predict_leaves_the_earlier_run_whole(art, tmp_path):
    """kill -9 while the second run writes its maps: predictions.jsonl and every map it names are
    the first run's (the second run's images have the same names and other content)."""
    first, second = write_images(tmp_path / "a", 120, seed=0), write_images(tmp_path / "b", 120, seed=1)
    out = tmp_path / "p"
    proc = clipad("predict", first, "--artifacts", art.root, "--out", out, "--save-maps", "--save-overlays", "--quiet")
    assert proc.returncode == 0, proc.stderr
    before = tree(out)
    watched = out / "maps" / "x000.npy"
    stamp = watched.stat().st_mtime_ns
    p = subprocess.Popen(
        [sys.executable, "-m", "clipad", "predict", str(second), "--artifacts", str(art.root), "--out", str(out)]
        + ["--save-maps", "--save-overlays", "--quiet"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if watched.stat().st_mtime_ns != stamp or list(tmp_path.glob("p.partial-*/maps/*.npy")):
            break
        time.sleep(0.002)
    assert p.poll() is None, "predict finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert tree(out) == before
