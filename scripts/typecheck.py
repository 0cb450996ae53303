"""Type-check the package with mypy (configured in pyproject.toml's [tool.mypy]).

The installed package ``clipad`` is assembled from several folders (pyproject.toml's
package-dir: clipad_export/ is ``clipad``, calibration/ and runtime/ are its subpackages, cli.py
is ``clipad.cli``), which mypy cannot map by itself. This script lays that package out as
symlinks in a temporary folder and runs ``mypy -p clipad`` there; mypy's messages name the
files through the links (``clipad/runtime/run.py`` is ``runtime/run.py`` here).

    python scripts/typecheck.py            # exit status: mypy's
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_view(dest: Path) -> Path:
    """``dest/clipad``: links to every entry of clipad_export/ (but its cli.py link), and to
    calibration/, runtime/ and cli.py under their package names."""
    pkg = dest / "clipad"
    pkg.mkdir()
    for entry in (ROOT / "clipad_export").iterdir():
        if entry.name not in ("cli.py", "__pycache__"):
            (pkg / entry.name).symlink_to(entry)
    for name, target in (("calibration", "calibration"), ("runtime", "runtime"), ("cli.py", "cli.py")):
        (pkg / name).symlink_to(ROOT / target)
    return pkg


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="clipad-typecheck-") as tmp:
        package_view(Path(tmp))
        env = {**os.environ, "MYPYPATH": tmp}
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "clipad"]
        return subprocess.run(cmd, cwd=tmp, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
