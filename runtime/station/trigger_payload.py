"""The one reading of a trigger's JSON payload, for every channel that carries one (the HTTP
``POST /trigger`` body and the MQTT command topic).

The payload is an object ``{"part_id": str|int, "recipe": str, "image": PATH}`` or with
``"image_b64": BASE64`` (an encoded PNG/JPEG) instead of ``image``; every field is optional (no
image: the station captures a frame from its source). A payload that is not such an object (not
UTF-8 JSON, not an object, an unknown or mistyped field, bad base64, both image fields, too large)
is still a trigger: ``Trigger.refused`` says why in one line, and the station answers it ERROR.

An image *path* names a file on the station's machine, so a client on the network could make the
station open any file (``/dev/zero`` never ends): paths are taken only inside ``ImagePaths.root``
(``--image-root``; the folder a camera or the line's software writes to) and refused otherwise.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from pathlib import Path

from clipad.runtime.station.records import Trigger, TriggerVia

FIELDS = frozenset({"part_id", "recipe", "image", "image_b64"})
MAX_ID = 256  # characters of a part id or recipe name


@dataclass(frozen=True)
class ImagePaths:
    """Where image paths in payloads may point: inside ``root`` (None: no path is accepted).
    A relative path is taken relative to ``root``; symbolic links are resolved first, so a link
    inside ``root`` to a file outside it is refused too."""

    root: Path | None = None

    def resolve(self, given: str) -> Path | str:
        """The file to read, or why it is refused (a str)."""
        if self.root is None:
            return "image paths are not accepted here (start the station with --image-root DIR, or send image_b64)"
        root = self.root.resolve()
        path = (root / given).resolve()
        if not path.is_relative_to(root):
            return f"image path is outside the station's image root {self.root}"
        if path.exists() and not path.is_file():
            return "image path is not a regular file"
        return path


def trigger_from_payload(
    payload: bytes,
    via: TriggerVia,
    paths: ImagePaths,
    *,
    max_bytes: int,
    received: float | None = None,
    received_wall: float | None = None,
) -> Trigger:
    """One payload as a trigger (see the module's text); ``received``/``received_wall``: when the
    channel received it (default: now)."""
    mono, wall = received or time.monotonic(), received_wall or time.time()

    def refused(why: str, part_id: str | None = None) -> Trigger:
        return Trigger(via, part_id=part_id, refused=f"malformed trigger: {why}", received=mono, received_wall=wall)

    if len(payload) > max_bytes:
        return refused(f"payload of {len(payload)} bytes is over {max_bytes}")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        return refused("payload is not UTF-8")
    except ValueError as err:
        return refused(f"not JSON ({err})")
    if not isinstance(obj, dict):
        return refused(f"expected a JSON object, got {type(obj).__name__}")
    part = obj.get("part_id")
    if isinstance(part, int) and not isinstance(part, bool):
        part = str(part)
    if part is not None and (not isinstance(part, str) or not 0 < len(part) <= MAX_ID):
        return refused(f"part_id must be a string of 1 to {MAX_ID} characters or an integer")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        return refused(f"unknown field {unknown[0]} (known: {', '.join(sorted(FIELDS))})", part)
    recipe = obj.get("recipe")
    if recipe is not None and (not isinstance(recipe, str) or not 0 < len(recipe) <= MAX_ID):
        return refused(f"recipe must be a string of 1 to {MAX_ID} characters", part)
    path, b64 = obj.get("image"), obj.get("image_b64")
    if path is not None and b64 is not None:
        return refused("give image or image_b64, not both", part)
    image: Path | bytes | None = None
    if path is not None:
        if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
            return refused("image must be a file path", part)
        where = paths.resolve(path)
        if isinstance(where, str):
            return refused(where, part)
        image = where
    elif b64 is not None:
        try:
            image = base64.b64decode(b64, validate=True) if isinstance(b64, str) else None
        except (binascii.Error, ValueError):
            image = None
        if not image:
            return refused("image_b64 must be base64 of an encoded image (PNG, JPEG, ...)", part)
    return Trigger(via, part_id=part, recipe=recipe, image=image, received=mono, received_wall=wall)
