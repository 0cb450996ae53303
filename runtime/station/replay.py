"""Offline triggers: a folder of images, or a list file, replayed through the station.

A list file has one image per line: ``PATH`` or ``PATH<TAB>PART_ID`` (a tab, so paths may hold
spaces); relative paths are relative to the list file's folder; blank lines and lines starting
with ``#`` are skipped. A folder (or one image, or a glob) is every image under it in sorted order
(``clipad.data.images.list_images``), each with its file stem as the part id. A file named in a
list that cannot be read is still a trigger: its job answers ERROR with why.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.data.images import list_images
from clipad.runtime.station.records import Trigger
from clipad.runtime.station.station import Station

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class ReplayItem:
    """One image to trigger on: its path and the part id to give (None: the station numbers it)."""

    image: Path
    part_id: str | None = None


def read_list(path: Path) -> list[ReplayItem]:
    """The items of a list file (see the module's text); one line when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ClipadError(f"cannot read replay list {path}: {getattr(err, 'strerror', None) or err}") from None
    items = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, part = line.rstrip("\r\n").partition("\t")
        image = Path(name.strip())
        items.append(ReplayItem(image if image.is_absolute() else path.parent / image, part.strip() or None))
    if not items:
        raise ClipadError(f"replay list {path} names no images")
    return items


def replay_items(spec: str | Path) -> list[ReplayItem]:
    """A list file (by its suffix: .txt, .lst, .list) or images (a folder, a file or a glob)."""
    p = Path(spec)
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        return read_list(p)
    return [ReplayItem(f, f.stem) for f in list_images(spec)]


def replay(
    station: Station,
    items: Iterable[ReplayItem],
    recipe: str | None = None,
    rate_hz: float | None = None,
    room_timeout_s: float = 60.0,
) -> list[str]:
    """Submit a trigger per item, in order, and return their job ids. Without ``rate_hz`` each
    trigger waits for room in the station's queue (a replay is never refused busy unless the
    queue stays full for ``room_timeout_s``); with it, triggers come at that steady rate, as a
    line would send them, and a full queue answers busy as it would on the line."""
    ids = []
    period = None if rate_hz is None else 1.0 / rate_hz
    next_at = time.monotonic()
    for item in items:
        if period is None:
            station.room(room_timeout_s)
        else:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += period
        # made only now: its reception time, which its deadline runs from, is when it is submitted
        ids.append(station.submit(Trigger(via="replay", part_id=item.part_id, recipe=recipe, image=item.image)))
    return ids
