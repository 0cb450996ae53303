"""GenICam camera pixel formats -> RGB uint8, into the one colour path (``clipad.data.colour``).

Industrial cameras (GigE Vision, USB3 Vision) send raw buffers in a named pixel format (the
GenICam Pixel Format Naming Convention, PFNC). ``decode`` turns one buffer into RGB uint8
[H, W, 3]:

- Mono8; Mono10, Mono12 and Mono16 unpacked (one pixel in a little-endian 16-bit container);
  Mono12Packed (the GigE Vision layout: two pixels in 3 bytes, the middle byte holding both
  pixels' low nibbles) and Mono12p (the PFNC layout: the 24 bits are the two pixels' bits
  least-significant first); grey is replicated to three channels.
- BayerRG/GR/GB/BG 8 and 12 (12 unpacked, in 16-bit containers): demosaiced by OpenCV's bilinear
  demosaic. GenICam names the pattern by the first two pixels of the first row; OpenCV names it by
  the second and third pixels of the second row, so GenICam's BayerRG is OpenCV's BayerBG (the
  table below maps them; tests/test_pixels.py checks it against pure-colour patches).
- RGB8 and BGR8.

More than 8 bits are mapped to 8 by keeping the top 8 bits of the format's depth (a 12-bit value
v becomes v >> 4): no scaling to the range actually used, no gamma, so a dim 12-bit image stays
dim. Packed formats are packed continuously across lines (a line of odd width ends mid-group), as
both standards specify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from clipad.data.colour import to_rgb

Kind = Literal["mono", "bayer", "rgb", "bgr"]
Packing = Literal["none", "gvsp", "pfnc"]


@dataclass(frozen=True)
class PixelFormat:
    """One camera pixel format: its PFNC name and 32-bit code, and how its bytes hold pixels.
    ``bits``: significant bits a sample; ``packing``: "none" (8 bits a byte, or one sample in a
    little-endian 16-bit container), "gvsp" (GigE Vision's Mono12Packed) or "pfnc" (Mono12p);
    ``cv_bayer``: OpenCV's demosaic code to RGB for Bayer formats."""

    name: str
    code: int
    kind: Kind
    bits: int
    packing: Packing = "none"
    cv_bayer: int | None = None


# Codes from the PFNC (each code's top byte says mono/colour, the next its bits a pixel).
_FORMATS = [
    PixelFormat("Mono8", 0x01080001, "mono", 8),
    PixelFormat("Mono10", 0x01100003, "mono", 10),
    PixelFormat("Mono12", 0x01100005, "mono", 12),
    PixelFormat("Mono16", 0x01100007, "mono", 16),
    PixelFormat("Mono12Packed", 0x010C0006, "mono", 12, "gvsp"),
    PixelFormat("Mono12p", 0x010C0047, "mono", 12, "pfnc"),
    # GenICam name (first row) -> OpenCV name (second row, second and third pixels): RG->BG, GR->GB, GB->GR, BG->RG
    PixelFormat("BayerGR8", 0x01080008, "bayer", 8, cv_bayer=cv2.COLOR_BayerGB2RGB),
    PixelFormat("BayerRG8", 0x01080009, "bayer", 8, cv_bayer=cv2.COLOR_BayerBG2RGB),
    PixelFormat("BayerGB8", 0x0108000A, "bayer", 8, cv_bayer=cv2.COLOR_BayerGR2RGB),
    PixelFormat("BayerBG8", 0x0108000B, "bayer", 8, cv_bayer=cv2.COLOR_BayerRG2RGB),
    PixelFormat("BayerGR12", 0x01100010, "bayer", 12, cv_bayer=cv2.COLOR_BayerGB2RGB),
    PixelFormat("BayerRG12", 0x01100011, "bayer", 12, cv_bayer=cv2.COLOR_BayerBG2RGB),
    PixelFormat("BayerGB12", 0x01100012, "bayer", 12, cv_bayer=cv2.COLOR_BayerGR2RGB),
    PixelFormat("BayerBG12", 0x01100013, "bayer", 12, cv_bayer=cv2.COLOR_BayerRG2RGB),
    PixelFormat("RGB8", 0x02180014, "rgb", 8),
    PixelFormat("BGR8", 0x02180015, "bgr", 8),
]
FORMATS: dict[str, PixelFormat] = {f.name: f for f in _FORMATS}
_BY_CODE: dict[int, PixelFormat] = {f.code: f for f in _FORMATS}


class UnsupportedPixelFormat(ValueError):
    """A pixel format ``decode`` does not convert."""


def pixel_format(name_or_code: str | int) -> PixelFormat:
    """The format by PFNC name ("Mono12p") or 32-bit code; UnsupportedPixelFormat otherwise."""
    found = _BY_CODE.get(name_or_code) if isinstance(name_or_code, int) else FORMATS.get(name_or_code)
    if found is None:
        shown = f"0x{name_or_code:08X}" if isinstance(name_or_code, int) else name_or_code
        raise UnsupportedPixelFormat(f"pixel format {shown} is not supported (supported: {', '.join(FORMATS)})")
    return found


def unpack_12(data: np.ndarray, count: int, packing: Packing) -> np.ndarray:
    """``count`` 12-bit pixels from packed bytes (uint8 [>= ceil(count * 1.5)]) -> uint16 [count].

    Each 3 bytes b0 b1 b2 hold pixels p0, p1. "gvsp" (GigE Vision Mono12Packed): b0 = p0 >> 4,
    b1 = (p1 & 0xF) << 4 | (p0 & 0xF), b2 = p1 >> 4. "pfnc" (Mono12p): b0 = p0 & 0xFF,
    b1 = (p1 & 0xF) << 4 | p0 >> 8, b2 = p1 >> 4.
    """
    groups = (count + 1) // 2
    need = groups * 3 if count % 2 == 0 else (groups - 1) * 3 + 2  # an odd last pixel needs 2 bytes
    if data.size < need:
        raise ValueError(f"{data.size} bytes hold fewer than {count} packed 12-bit pixels ({need} bytes)")
    raw = np.zeros(groups * 3, dtype=np.uint16)
    raw[:need] = data[:need]
    b0, b1, b2 = raw[0::3], raw[1::3], raw[2::3]
    out = np.empty(groups * 2, dtype=np.uint16)
    if packing == "gvsp":
        out[0::2] = (b0 << 4) | (b1 & 0xF)
    else:
        out[0::2] = b0 | ((b1 & 0xF) << 8)
    out[1::2] = (b2 << 4) | (b1 >> 4)
    return out[:count]


def decode(data: bytes | bytearray | memoryview | np.ndarray, width: int, height: int, fmt: str | int) -> np.ndarray:
    """One camera buffer in pixel format ``fmt`` (name or code) -> RGB uint8 [height, width, 3].

    ``data``: the image bytes, lines back to back without padding (as GigE Vision and USB3 Vision
    deliver them); extra bytes after the image are ignored, too few raise ValueError. Samples of
    more than 8 bits keep their top 8 bits (see the module's text).
    """
    f = pixel_format(fmt)
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    count = width * height
    if f.packing != "none":
        samples = unpack_12(raw, count, f.packing).reshape(height, width)
    else:
        per_pixel = (3 if f.kind in ("rgb", "bgr") else 1) * (1 if f.bits == 8 else 2)
        if raw.size < count * per_pixel:
            raise ValueError(f"{raw.size} bytes is less than a {width} x {height} {f.name} image ({count * per_pixel})")
        body = raw[: count * per_pixel]
        if f.kind in ("rgb", "bgr"):
            return to_rgb(body.reshape(height, width, 3), order=f.kind)
        samples = body.view("<u2").reshape(height, width) if f.bits > 8 else body.reshape(height, width)
    if f.bits > 8:
        # Keep the top 8 of the format's bits; a value beyond the format's range (a camera that
        # fills the container's unused bits) saturates instead of wrapping.
        samples = np.minimum(samples >> (f.bits - 8), 255).astype(np.uint8)
    if f.kind == "bayer":
        assert f.cv_bayer is not None
        return cv2.cvtColor(np.ascontiguousarray(samples), f.cv_bayer)
    return to_rgb(samples)
