"""Robust image loading for the vision tower.

Every image that reaches the processor goes through :func:`load_image`, which
turns whatever the user handed us (a path, encoded bytes, a ``data:`` URI or an
already-open PIL image) into a fully decoded, EXIF-oriented ``RGB`` image, or
raises :class:`MediaError` with a message that names the source and the reason.

Design choices worth knowing:

* Nothing is fetched from the network. The training/inference machines are
  often offline, and silently downloading user-supplied URLs is a security and
  reproducibility hazard, so ``http(s)://`` sources are refused with advice.
* The pixel count is checked from the header *before* decoding (``Image.open``
  is lazy), so a decompression bomb costs a few hundred bytes of I/O, not
  gigabytes of RAM. PIL's global settings (``Image.MAX_IMAGE_PIXELS``,
  ``ImageFile.LOAD_TRUNCATED_IMAGES``) are never modified: other code in the
  process may rely on them.
* Transparent pixels are composited onto WHITE, which is what image viewers and
  browsers show for most documents/screenshots/logos, and what CLIP/SigLIP-style
  encoders saw most during pre-training. Dropping alpha instead would expose the
  arbitrary colour stored under fully transparent pixels (often black).
* High bit-depth grayscale is rescaled to 8 bit (``65535 -> 255``) instead of
  clipped, which is what ``Image.convert("L")`` does and which turns most
  16-bit images pure white.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["MAX_IMAGE_PIXELS", "ImageSource", "MediaError", "load_image"]


class MediaError(ValueError):
    """An image/video that cannot be used; message names the source and the reason."""


# Refuse images with more pixels than this. The value is PIL's own hard
# decompression-bomb limit (2 x PIL's default Image.MAX_IMAGE_PIXELS of
# 89,478,485, where PIL merely warns): ~179 MP, ~0.5 GiB as 8-bit RGB, e.g.
# 13k x 13k. That is far above anything a vision encoder needs (AnyRes grids
# top out at a few MP) yet small enough that a malicious or corrupt header
# cannot make us allocate tens of GiB. We keep our own constant so PIL's
# global is never touched; large-but-legit scans between PIL's warning and
# error thresholds still load.
MAX_IMAGE_PIXELS: int = 178_956_970

# Union[...] rather than "|" so the alias also evaluates on Python 3.10 at runtime.
ImageSource = Union[str, os.PathLike, bytes, Image.Image]

_WHITE = (255, 255, 255)

# Errors PIL raises for files it cannot identify or decode. SyntaxError and
# struct.error come out of some plugins' header parsers; EOFError/IndexError
# from truncated or malformed headers.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def load_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Load ``source`` as a fully decoded, EXIF-oriented ``RGB`` image.

    ``source`` may be a filesystem path (``str``/``PathLike``), encoded image
    bytes, a ``data:`` URI string, or an open ``PIL.Image.Image`` (which is not
    modified or closed). Images with more than ``max_pixels`` pixels are
    refused before decoding. Raises :class:`MediaError` for anything unusable
    and ``TypeError`` for an unsupported source type.
    """
    if isinstance(source, Image.Image):
        return _finish(source, "<PIL image>", max_pixels)

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _load_from_bytes(data, "<bytes>", max_pixels)

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):  # PathLike may return bytes paths
            path = os.fsdecode(path)
        lowered = path[:8].lower()
        if lowered.startswith(("http://", "https://")):
            raise MediaError(
                f"{path}: URLs are not fetched (no network access is assumed and "
                "nothing is downloaded silently); download the image first and pass "
                "the local file path"
            )
        if lowered.startswith("data:"):
            return _load_from_bytes(_decode_data_uri(path), "<data URI>", max_pixels)
        return _load_from_path(path, max_pixels)

    raise TypeError(
        "load_image expects a path (str/PathLike), bytes or a PIL.Image.Image, "
        f"got {type(source).__name__}"
    )


def check_media_file(path: str, kind: str) -> None:
    """MediaError naming ``path`` unless it is an existing, non-empty, readable file (``kind``: for the message)."""
    if not os.path.exists(path):
        raise MediaError(f"{path}: file not found")
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a directory, not an {kind} file")
    try:
        if os.path.getsize(path) == 0:
            raise MediaError(f"{path}: file is empty")
    except OSError as exc:
        raise MediaError(f"{path}: cannot read file ({exc})") from exc


def _load_from_path(path: str, max_pixels: int) -> Image.Image:
    """Open ``path`` and decode it; the file handle is closed before returning."""
    # Check these up front: PIL's errors for them are less clear (a directory
    # gives IsADirectoryError on Linux but PermissionError on Windows).
    check_media_file(path, "image")

    def probe() -> tuple[int, int] | None:
        try:
            with open(path, "rb") as fp:
                return _probe_size(fp)
        except OSError:  # only used to word the message; never mask the bomb error
            return None

    return _decode(lambda: Image.open(path), path, probe, max_pixels)


def _load_from_bytes(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Decode encoded image bytes (label names the source in errors)."""
    if not data:
        raise MediaError(f"{label}: empty input (0 bytes)")
    return _decode(lambda: Image.open(io.BytesIO(data)), label, lambda: _probe_size(io.BytesIO(data)), max_pixels)


def _decode(
    open_image: Callable[[], Image.Image],
    label: str,
    probe: Callable[[], tuple[int, int] | None],
    max_pixels: int,
) -> Image.Image:
    """Open, size-check and decode one image; every failure becomes a MediaError naming ``label``.

    ``probe`` re-reads the header size, only to word the message when PIL refuses a bomb itself.
    """
    try:
        with _bomb_warnings(max_pixels):
            with open_image() as im:
                # `with` closes the file; _finish returns an independent, fully
                # loaded image, so nothing lazy outlives this block.
                return _finish(im, label, max_pixels)
    except MediaError:
        raise
    except UnidentifiedImageError as exc:
        raise MediaError(f"{label}: not a recognised image format (cannot identify image data)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(label, probe(), max_pixels, exc) from exc
    except PermissionError as exc:
        raise MediaError(f"{label}: permission denied") from exc
    except _DECODE_ERRORS as exc:
        raise MediaError(f"{label}: cannot decode image ({_reason(exc)})") from exc


def _decode_data_uri(uri: str) -> bytes:
    """Return the payload of a ``data:[<mime>][;base64],<payload>`` URI."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise MediaError("<data URI>: malformed data URI (no ',' separator)")
    if not header.lower().endswith(";base64"):
        # Non-base64 data URIs are percent-encoded text, never used for images.
        raise MediaError("<data URI>: only base64-encoded data URIs are supported")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"<data URI>: invalid base64 payload ({exc})") from exc


def _finish(im: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """Size-check, decode, orient and convert ``im``; returns a new image."""
    width, height = im.size
    # Image.open only parsed the header so far: refuse huge images before the
    # decoder allocates width*height*channels bytes.
    if width * height > max_pixels:
        raise _bomb_error(label, (width, height), max_pixels, None)
    try:
        with _bomb_warnings(max_pixels):
            # Full decode now so truncated/corrupt data fails here with a clear
            # message instead of later inside the processor. PIL's
            # LOAD_TRUNCATED_IMAGES stays False, so truncation raises OSError.
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(label, None, max_pixels, exc) from exc
    except _DECODE_ERRORS as exc:
        raise MediaError(f"{label}: cannot decode image ({_reason(exc)})") from exc

    try:
        # Cameras store pixels unrotated plus an orientation tag; the model must
        # see the image the way a human does. Returns a new image (or a copy).
        oriented = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - metadata is best effort
        # Corrupt EXIF must not make a decodable image unusable; keep the
        # stored orientation rather than failing.
        oriented = im

    try:
        out = _to_rgb(oriented)
    except _DECODE_ERRORS as exc:
        raise MediaError(f"{label}: cannot convert mode {oriented.mode!r} to RGB ({_reason(exc)})") from exc
    if out is im:  # never hand back (or alias) the caller's / a file-backed object
        out = out.copy()
    out.load()
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit ``RGB`` with correct values (new image)."""
    mode = im.mode

    if mode in ("RGBa", "La"):
        # Premultiplied alpha: colour already equals c*a/255, so compositing
        # over white is just colour + (255 - alpha). PIL cannot convert "La".
        arr = np.asarray(im, dtype=np.int16)
        blended = np.clip(arr[..., :-1] + (255 - arr[..., -1:]), 0, 255).astype(np.uint8)
        if blended.shape[-1] == 1:
            blended = np.repeat(blended, 3, axis=-1)
        return Image.fromarray(blended, "RGB")

    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_depth_to_rgb(im)

    if mode == "P" or im.has_transparency_data:
        # Covers RGBA/LA/PA, palettes (possibly with RGBA entries or a tRNS
        # index) and L/RGB colour-key transparency. For an opaque palette the
        # composite is a no-op, so always taking this path for "P" is safe.
        return _composite_on_white(im.convert("RGBA"))

    if mode == "RGB":
        return im.copy()

    # 1, L, CMYK, YCbCr, LAB, HSV, RGBX: PIL's converters are correct for these
    # (LAB goes through littleCMS; CMYK uses PIL's standard naive formula).
    return im.convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float grayscale to 8-bit RGB."""
    arr = np.asarray(im)
    if im.mode == "F":
        # Float images carry no standard range; treat them as 0..255 data (the
        # usual case, e.g. from Image.convert("F")) and clip. NaN -> 0.
        gray = np.clip(np.rint(np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)), 0, 255)
        gray = gray.astype(np.uint8)
    else:
        # "I;16*" is unsigned 16-bit. Mode "I" (int32) is what Pillow produces
        # for 16-bit sources (PNG/TIFF/PGM 16-bit, or convert("I")), so it is
        # treated as 16-bit too, with out-of-range values clipped. A fixed
        # mapping (not per-image min/max) keeps brightness consistent across
        # frames. Shifting by 8 maps 0..65535 onto 0..255 exactly.
        gray = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)

    transparency = im.info.get("transparency")
    if isinstance(transparency, (int, float)) and not isinstance(transparency, bool):
        # Colour-key transparency (PNG tRNS on 16-bit grayscale): keyed pixels
        # become the white background like every other transparent pixel.
        gray = np.where(arr == transparency, np.uint8(255), gray)

    return Image.fromarray(gray, "L").convert("RGB")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Alpha-composite an ``RGBA`` image over white (C code, exact rounding)."""
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


@contextlib.contextmanager
def _bomb_warnings(max_pixels: int) -> Iterator[None]:
    """Locally control PIL's DecompressionBombWarning without touching globals.

    If our limit is at or below PIL's warning threshold, PIL's warning means the
    image would be refused anyway, so it is raised as an error (then turned into
    MediaError). If the caller raised ``max_pixels`` above PIL's threshold, the
    warning is silenced and our own check decides.
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    action = "error" if pil_limit is not None and max_pixels <= pil_limit else "ignore"
    with warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        yield


def _bomb_error(
    label: str,
    size: tuple[int, int] | None,
    max_pixels: int,
    cause: BaseException | None,
) -> MediaError:
    """Build the 'image too large' MediaError, naming WxH when known."""
    if size is not None:
        width, height = size
        pixels = width * height
        what = f"image is {width}x{height} = {pixels:,} pixels"
        if pixels <= max_pixels and cause is not None:
            # Only reachable when max_pixels was raised above Pillow's own hard
            # limit (2 x Image.MAX_IMAGE_PIXELS), which we do not override.
            return MediaError(
                f"{label}: {what}, which exceeds Pillow's global decompression-bomb "
                f"limit ({cause}); refusing to decode"
            )
    else:
        what = f"image is too large ({_reason(cause)})" if cause is not None else "image is too large"
    return MediaError(
        f"{label}: {what}, more than the limit of max_pixels={max_pixels:,} "
        "pixels (possible decompression bomb); refusing to decode"
    )


def _probe_size(fp: IO[bytes]) -> tuple[int, int] | None:
    """Read only the header to get (width, height), bypassing PIL's bomb check.

    Only used to word the error message after PIL itself refused the image:
    ``Image.open`` raises before exposing the size. Mirrors ``Image.open``'s
    plugin loop using PIL's public format registry; never decodes pixels.
    """
    try:
        Image.init()
        fp.seek(0)
        prefix = fp.read(16)
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            try:
                if accept is not None:
                    accepted = accept(prefix)
                    if not accepted or isinstance(accepted, str):
                        continue
                fp.seek(0)
                probed: ImageFile.ImageFile = factory(fp, "")
                return probed.size
            except Exception:  # noqa: BLE001 - wrong plugin, try the next one
                continue
    except Exception:  # noqa: BLE001 - the message degrades gracefully without size
        return None
    return None


def _reason(exc: BaseException | None) -> str:
    """Short human-readable reason from an exception."""
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
