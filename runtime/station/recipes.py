"""The station's recipes: named, calibrated artifacts opened once and kept ready.

A recipe is what the line switches between at a changeover (another product: another category's
artifacts). Every recipe is opened at start (``RecipeBook.load``) or by an explicit
``RecipeBook.prepare``: the artifacts' sha256 check, the backend's model load and one warm-up
inference happen there, never inside a job, so a changeover never puts a model load inside a
job's deadline. A station needs thresholds to say OK or NG: an uncalibrated recipe is refused.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipad.calibration.constants import Calibration
from clipad.core.errors import ClipadError
from clipad.data.geometry import Geometry
from clipad.runtime.serving import Served, open_served

RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class ServeOptions:
    """How every recipe's backend is opened: the words of `clipad run`'s --backend, --device, --precision."""

    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"


# (artifacts folder, options) -> an opened serving setup; tests give a wrapped backend through it.
Opener = Callable[[Path, ServeOptions], Served]


def open_recipe_served(artifacts: Path, options: ServeOptions) -> Served:
    """The artifacts, backend and calibration of a recipe (``serving.open_served``)."""
    return open_served(artifacts, options.backend, options.device, options.precision, need_calibration=True)


@dataclass
class Recipe:
    """One opened recipe: ``name``, the folder it came from, and its served setup (backend and the
    calibration it must have)."""

    name: str
    artifacts: Path
    served: Served

    @property
    def calibration(self) -> Calibration:
        assert self.served.calibration is not None  # RecipeBook refuses uncalibrated recipes
        return self.served.calibration

    @property
    def geometry(self) -> Geometry:
        """The model's input size and how images are fitted to it (``clipad.data.geometry``)."""
        return self.served.artifacts.geometry

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB [B, H, W, 3] -> (anomaly maps float32 [B, H, W], image_prob float32 [B])."""
        return self.served.backend(images)

    def describe(self) -> str:
        return f"recipe {self.name}: {self.artifacts} ({self.served.backend.describe()})"


def parse_recipe_spec(spec: str) -> tuple[str, Path]:
    """``NAME=ARTIFACTS_DIR`` -> (name, folder); one line when it is not that."""
    name, sep, folder = spec.partition("=")
    name = name.strip()
    if not sep or not folder.strip():
        raise ClipadError(f"--recipe takes NAME=ARTIFACTS_DIR, got '{spec}'")
    if not RECIPE_NAME.fullmatch(name):
        raise ClipadError(
            f"recipe name '{name}' must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name, Path(folder.strip())


class RecipeBook:
    """The station's opened recipes and which one is active; safe to use from any thread.

    ``get`` is what a job uses: a lookup, never a load. ``prepare`` opens one more recipe (a
    changeover planned ahead); ``switch`` changes the active one."""

    def __init__(self, options: ServeOptions | None = None, opener: Opener = open_recipe_served):
        self.options = options or ServeOptions()
        self._opener = opener
        self._lock = threading.Lock()
        self._recipes: dict[str, Recipe] = {}
        self._active: str | None = None
        self.notes: list[str] = []  # what the operator should be told about the recipes, one line each
        self.unavailable: dict[str, str] = {}  # recipes given at start that could not be opened -> why

    @classmethod
    def load(
        cls,
        specs: Sequence[str],
        active: str | None = None,
        options: ServeOptions | None = None,
        opener: Opener = open_recipe_served,
    ) -> RecipeBook:
        """Every ``NAME=DIR`` of ``specs`` opened; ``active``: the active recipe (default: the first).
        One line (ClipadError) for a bad spec or a duplicate name, and when the active recipe
        cannot be opened (its artifacts fail to open or their hash check, or are uncalibrated);
        whatever was opened is closed again then. Another recipe that cannot be opened is
        *unavailable*: the station starts without it, says why in one line (``notes``), and a job
        for it is answered ERROR with that reason (``unavailable``), so one broken product does
        not stop the line's others."""
        if not specs:
            raise ClipadError("a station needs at least one --recipe NAME=ARTIFACTS_DIR")
        parsed = [parse_recipe_spec(s) for s in specs]
        names = [n for n, _ in parsed]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ClipadError(f"recipe {twice[0]} is given twice; each --recipe needs its own name")
        if active is not None and active not in names:
            raise ClipadError(f"--active {active} is not one of the recipes ({', '.join(names)})")
        book = cls(options, opener)
        active = active or names[0]
        try:
            for name, folder in parsed:
                try:
                    book.prepare(name, folder)
                except ClipadError as err:
                    if name == active:
                        raise
                    book.unavailable[name] = str(err).removeprefix(f"recipe {name}: ")
                    book.notes.append(f"warning: recipe {name} is unavailable (its jobs answer error): {err}")
        except BaseException:
            book.close()
            raise
        book.switch(active)
        return book

    def prepare(self, name: str, artifacts: Path) -> Recipe:
        """Open the recipe ``name`` from ``artifacts`` (hash check, model load, one warm-up
        inference) and add it; it becomes active when it is the first. One line when the name is
        taken, the artifacts cannot be opened or fail their check, or they are not calibrated."""
        if not RECIPE_NAME.fullmatch(name):
            raise ClipadError(f"recipe name '{name}' is not valid")
        with self._lock:
            if name in self._recipes:
                raise ClipadError(f"recipe {name} is loaded already")
        try:
            served = self._opener(artifacts, self.options)
        except ClipadError as err:
            raise ClipadError(f"recipe {name}: {err}") from None
        try:
            if served.calibration is None:
                raise ClipadError(
                    f"recipe {name}: {artifacts} is not calibrated; run `clipad calibrate --artifacts {artifacts} "
                    "--good IMAGES` first (a station needs thresholds to say OK or NG)"
                )
            recipe = Recipe(name, artifacts, served)
            try:  # the first inference allocates the backend's buffers: done here, not in a job
                recipe.infer(np.zeros((1, *recipe.geometry.hw, 3), np.uint8))
            except Exception as err:  # noqa: BLE001 - any backend failure is this recipe's one line
                raise ClipadError(f"recipe {name}: the backend failed its first inference: {err}") from None
            with self._lock:
                if name in self._recipes:
                    raise ClipadError(f"recipe {name} is loaded already")
                self._recipes[name] = recipe
                if self._active is None:
                    self._active = name
        except BaseException:
            served.close()
            raise
        self.notes.extend(f"recipe {name}: {n}" for n in served.notes)
        return recipe

    def get(self, name: str) -> Recipe:
        """The opened recipe ``name``; ClipadError "unknown recipe NAME" when there is none."""
        with self._lock:
            recipe = self._recipes.get(name)
        if recipe is None:
            raise ClipadError(self.why_not(name))
        return recipe

    def why_not(self, name: str) -> str:
        """Why a job cannot run on ``name``: unavailable (and why) or unknown."""
        why = self.unavailable.get(name)
        return f"recipe {name} is unavailable: {why}" if why is not None else f"unknown recipe {name}"

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._recipes

    @property
    def active(self) -> str:
        """The active recipe's name (what a trigger without a recipe gets)."""
        with self._lock:
            if self._active is None:
                raise ClipadError("no recipe is loaded")
            return self._active

    def switch(self, name: str) -> None:
        """Make ``name`` the active recipe (it must be loaded: a switch never loads)."""
        with self._lock:
            if name not in self._recipes:
                raise ClipadError(f"unknown recipe {name}")
            self._active = name

    @property
    def names(self) -> list[str]:
        """The loaded recipes' names, in loading order."""
        with self._lock:
            return list(self._recipes)

    def close(self) -> None:
        """Release every recipe's backend."""
        with self._lock:
            recipes, self._recipes, self._active = list(self._recipes.values()), {}, None
        for r in recipes:
            r.served.close()
