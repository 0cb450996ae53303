"""Camera pixel formats -> RGB uint8 (clipad.data.pixels), each against an independent reference:
packed bytes written out by hand from known pixel values, Bayer mosaics sampled from a known RGB
image of pure-colour patches (a swapped channel or a shifted pattern turns a patch the wrong
colour), and the PFNC codes against Aravis' own constants where Aravis is installed."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from clipad.data.pixels import FORMATS, UnsupportedPixelFormat, decode, pixel_format


def grey(img: np.ndarray) -> np.ndarray:
    """The one channel of an RGB image whose channels must all be equal."""
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    return img[..., 0]


def test_mono8_is_replicated_grey():
    data = bytes([0, 1, 127, 128, 254, 255])
    assert grey(decode(data, 3, 2, "Mono8")).tolist() == [[0, 1, 127], [128, 254, 255]]


@pytest.mark.parametrize(
    ("fmt", "values", "top8"),
    [
        ("Mono10", [0x000, 0x3FF, 0x155, 0x204], [0x00, 0xFF, 0x55, 0x81]),
        ("Mono12", [0x000, 0xFFF, 0xABC, 0x0F0], [0x00, 0xFF, 0xAB, 0x0F]),
        ("Mono16", [0x0000, 0xFFFF, 0xABCD, 0x00FF], [0x00, 0xFF, 0xAB, 0x00]),
    ],
)
def test_unpacked_mono_keeps_the_top_8_bits(fmt, values, top8):
    data = b"".join(struct.pack("<H", v) for v in values)  # little-endian 16-bit containers
    assert grey(decode(data, 2, 2, fmt)).ravel().tolist() == top8


# Pixels 0xABC 0x123 0xFFF 0x001 0x800, written out byte by byte from each standard's layout.
PACKED_PIXELS_TOP8 = [0xAB, 0x12, 0xFF, 0x00, 0x80]
GVSP_BYTES = bytes([0xAB, 0x3C, 0x12, 0xFF, 0x1F, 0x00, 0x80, 0x00])  # last pair: 0x800 alone, 2 bytes
PFNC_BYTES = bytes([0xBC, 0x3A, 0x12, 0xFF, 0x1F, 0x00, 0x00, 0x08])


@pytest.mark.parametrize(("fmt", "data"), [("Mono12Packed", GVSP_BYTES), ("Mono12p", PFNC_BYTES)])
def test_packed_12_bit_mono(fmt, data):
    assert grey(decode(data, 5, 1, fmt)).ravel().tolist() == PACKED_PIXELS_TOP8


def test_packed_12_bit_groups_run_across_lines():
    """Width 5: the first line ends mid-group and the second line starts inside it."""
    data = GVSP_BYTES[:-2] + bytes([0x80, 0x40, 0x77, 0x99, 0x00, 0x55, 0x66, 0x00, 0x12])
    # the pair 0x800 (end of line 1), 0x774 (start of line 2); then 0x990 0x550, 0x660 0x120
    assert grey(decode(data, 5, 2, "Mono12Packed")).tolist() == [
        PACKED_PIXELS_TOP8,
        [0x77, 0x99, 0x55, 0x66, 0x12],
    ]
    assert decode(data, 5, 2, "Mono12Packed").shape == (2, 5, 3)


def test_packed_formats_differ():
    """The same bytes read as the two layouts give different pixels (the layouts are not mixed up)."""
    assert decode(GVSP_BYTES, 5, 1, "Mono12Packed").tolist() != decode(GVSP_BYTES, 5, 1, "Mono12p").tolist()


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# Each 2 x 2 tile's colour channels (0 R, 1 G, 2 B), first row first, from the GenICam names.
TILES = {"RG": [[0, 1], [1, 2]], "GR": [[1, 0], [2, 1]], "GB": [[1, 2], [0, 1]], "BG": [[2, 1], [1, 0]]}


def patches() -> np.ndarray:
    """A 32 x 32 RGB image of four 16 x 16 pure-colour patches: red, green / blue, white."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:16, :16], img[:16, 16:], img[16:, :16], img[16:, 16:] = RED, GREEN, BLUE, WHITE
    return img


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The raw frame a sensor with this Bayer pattern records of ``rgb`` [H, W] (each pixel keeps one channel)."""
    h, w = rgb.shape[:2]
    channel = np.array(TILES[pattern])[np.arange(h)[:, None] % 2, np.arange(w)[None, :] % 2]
    return np.take_along_axis(rgb, channel[..., None], axis=2)[..., 0]


@pytest.mark.parametrize("pattern", list(TILES))
@pytest.mark.parametrize("bits", [8, 12])
def test_bayer_patches_come_out_their_own_colour(pattern, bits):
    raw = mosaic(patches(), pattern)
    data = raw.tobytes() if bits == 8 else (raw.astype("<u2") << 4).tobytes()  # 255 -> 0xFF0 in 12 bits
    out = decode(data, 32, 32, f"Bayer{pattern}{bits}")
    # inside each patch, 2 pixels from its edges (the demosaic blends neighbours across an edge)
    for (y, x), colour in zip([(0, 0), (0, 16), (16, 0), (16, 16)], [RED, GREEN, BLUE, WHITE], strict=True):
        inner = out[y + 2 : y + 14, x + 2 : x + 14].reshape(-1, 3)
        assert (inner == colour).all(), f"Bayer{pattern}{bits} patch at {(y, x)}: {inner[0].tolist()} != {colour}"


def test_rgb8_and_bgr8_channel_order():
    data = bytes([10, 20, 30, 40, 50, 60])
    assert decode(data, 2, 1, "RGB8").tolist() == [[[10, 20, 30], [40, 50, 60]]]
    assert decode(data, 2, 1, "BGR8").tolist() == [[[30, 20, 10], [60, 50, 40]]]


def test_short_buffers_and_unknown_formats_are_errors():
    with pytest.raises(ValueError, match="less than"):
        decode(bytes(5), 3, 2, "Mono8")
    with pytest.raises(ValueError, match="fewer than"):
        decode(bytes(7), 5, 1, "Mono12p")
    with pytest.raises(UnsupportedPixelFormat, match="YUV422_8"):
        decode(bytes(8), 2, 2, "YUV422_8")
    with pytest.raises(UnsupportedPixelFormat, match="0x02100032"):
        pixel_format(0x02100032)


def test_codes_match_aravis():
    """Our PFNC code table against Aravis' constants (an independent reading of the standard)."""
    gi = pytest.importorskip("gi", reason="PyGObject not installed (the genicam extra)")
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ValueError, ImportError):
        pytest.skip("Aravis' GObject introspection data not installed (gir1.2-aravis-0.8)")
    names = {
        "Mono8": "MONO_8",
        "Mono10": "MONO_10",
        "Mono12": "MONO_12",
        "Mono16": "MONO_16",
        "Mono12Packed": "MONO_12_PACKED",
        "Mono12p": None,  # not in Aravis 0.8.26's table: only its PFNC fields are checked below
        "RGB8": "RGB_8_PACKED",
        "BGR8": "BGR_8_PACKED",
        **{f"Bayer{p}{b}": f"BAYER_{p}_{b}" for p in TILES for b in (8, 12)},
    }
    assert set(names) == set(FORMATS)
    for ours, theirs in names.items():
        code = FORMATS[ours].code
        if theirs is None:
            assert code >> 24 == 0x01 and (code >> 16) & 0xFF == 12, ours  # mono, 12 bits a pixel
        else:
            assert code == getattr(Aravis, f"PIXEL_FORMAT_{theirs}"), ours
        assert pixel_format(FORMATS[ours].code).name == ours
