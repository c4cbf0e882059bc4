"""Pictures in written answers (課題1's diagram): notebook attachments, inline data URIs and image files
beside the notebook, each checked with Pillow and re-encoded as a bounded PNG.

Re-encoding means a report never carries the student's bytes: whatever a file claims to be, what a
TA's browser opens is a PNG that Pillow wrote.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

MAX_PICTURES = 6  # per answer cell; a diagram needs one or two
MAX_PICTURE_BYTES = 10 * 1024**2
MAX_PIXELS = 40_000_000  # decoded size; refused before decoding (decompression bombs)
MAX_SIDE = 1600  # longest side of the PNG written to the report
FORMATS = {"PNG", "JPEG", "GIF", "WEBP", "BMP"}

# Markdown `![alt](src "title")` and HTML `<img src="...">`, the two ways notebooks show a picture.
REFERENCE = re.compile(r"!\[(?P<alt>[^\]]*)\]\(\s*<?(?P<src>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
                       r"|<img\b[^>]*?\bsrc\s*=\s*[\"'](?P<html_src>[^\"']+)[\"'][^>]*>", re.IGNORECASE)

CODE = re.compile(r"```.*?```|~~~.*?~~~|`[^`\n]+`", re.DOTALL)  # fenced blocks and inline code spans


class PictureError(Exception):
    """A picture that cannot be shown; the message says why, for the student's report."""


@dataclass
class AnswerPictures:
    """An answer's text with each picture replaced by `[picture N]`, the pictures as PNG, and warnings."""

    text: str
    pictures: list[bytes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def to_png(data: bytes) -> bytes:
    """A PNG of at most MAX_SIDE pixels a side from the bytes of a PNG, JPEG, GIF, WebP or BMP picture."""
    from PIL import Image, ImageOps

    if len(data) > MAX_PICTURE_BYTES:
        raise PictureError(f"{len(data) / 1024**2:.0f} MB, over the {MAX_PICTURE_BYTES // 1024**2} MB limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            if image.format not in FORMATS:
                raise PictureError(f"{image.format or 'unknown'} pictures are not shown; paste a PNG or JPEG")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise PictureError(f"{width}x{height} pixels, over the limit of {MAX_PIXELS:,}")
            image.load()  # the first frame of an animation
            image = ImageOps.exif_transpose(image)  # a phone photo of a drawing, the right way up
            image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE))
            out = io.BytesIO()
            image.save(out, "PNG")
            return out.getvalue()
    except PictureError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PictureError(f"more pixels than Pillow opens safely, over the limit of {MAX_PIXELS:,}") from None
    except Exception as exc:  # Pillow raises many types (OSError, ValueError, SyntaxError...) on malformed input
        raise PictureError(f"not a readable picture ({type(exc).__name__})") from None


def _data_uri(src: str) -> bytes:
    header, _, payload = src.partition(",")
    if not header.lower().startswith("data:image/") or not header.lower().endswith(";base64"):
        raise PictureError("an inline picture that is not base64-encoded")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise PictureError("an inline picture whose base64 data is broken") from None


def _attachment(name: str, attachments: dict) -> bytes:
    bundle = attachments.get(name)
    if not isinstance(bundle, dict):
        raise PictureError(f"the cell has no attachment named {name!r}")
    payload = next((v for k, v in bundle.items() if str(k).startswith("image/")), None)
    if payload is None:
        raise PictureError(f"attachment {name!r} is not a picture")
    return _decode(payload, f"attachment {name!r} has broken base64 data")


def _decode(payload, broken: str) -> bytes:
    """Base64 as notebooks store it: one string, or a list of lines."""
    try:
        return base64.b64decode("".join(payload) if isinstance(payload, list) else str(payload))
    except (binascii.Error, ValueError, TypeError):
        raise PictureError(broken) from None


def _file(src: str, notebook_dir: Path | None, root: Path | None) -> bytes:
    if notebook_dir is None or root is None:
        raise PictureError("a lone .ipynb cannot carry files; paste the picture into the cell, or submit a .zip "
                           "with the notebook and the file")
    try:
        path = (notebook_dir / unquote(src.split("?")[0])).resolve()  # links write spaces as %20
        if not path.is_relative_to(root.resolve()):  # also where a symbolic link inside points out
            raise PictureError("it lies outside the submission")
        if not path.is_file():
            raise PictureError("it is not a file in the submission")
        if path.stat().st_size > MAX_PICTURE_BYTES:
            raise PictureError(f"it is over the {MAX_PICTURE_BYTES // 1024**2} MB limit")
        return path.read_bytes()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system, a file gone
        raise PictureError("it cannot be read as a file of the submission") from None


def _add(found: AnswerPictures, load, label: str) -> str:
    """Add the picture `load()` returns to `found`; the text that stands for it in the answer."""
    if len(found.pictures) >= MAX_PICTURES:
        found.warnings.append(f"{label} not shown: more than {MAX_PICTURES} pictures")
        return f"[picture not shown: over {MAX_PICTURES}]"
    try:
        found.pictures.append(to_png(load()))
    except PictureError as exc:
        found.warnings.append(f"{label} not shown: {exc}")
        return "[picture not shown]"
    return f"[picture {len(found.pictures)}]"


def output_pictures(source: str, outputs) -> AnswerPictures:
    """A code answer cell: its source as written (it may be parsed, as 課題1's shape table is) and the
    pictures its saved outputs show (a diagram drawn with matplotlib)."""
    found = AnswerPictures(text=source)
    for number, output in enumerate(outputs if isinstance(outputs, list) else [], start=1):
        data = output.get("data") if isinstance(output, dict) else None
        payload = next((v for k, v in data.items() if k in ("image/png", "image/jpeg")), None) if isinstance(
            data, dict) else None
        if payload is not None:
            _add(found, lambda payload=payload: _decode(payload, "its base64 data is broken"),
                 f"the picture in output {number}")
    return found


def extract_pictures(text: str, attachments: dict | None = None, notebook_dir: Path | None = None,
                     root: Path | None = None) -> AnswerPictures:
    """The pictures an answer cell shows, in order: its references (attachments, data URIs, files under
    `root` relative to `notebook_dir`), then attachments it does not reference. Web addresses are left
    as text (never fetched)."""
    attachments = attachments if isinstance(attachments, dict) else {}
    found = AnswerPictures(text="")
    used: set[str] = set()

    def replace(match: re.Match) -> str:
        src = match.group("src") or match.group("html_src")
        if re.match(r"(?i)https?://", src):
            return match.group(0)
        if src.lower().startswith("attachment:"):
            name = src.split(":", 1)[1]
            used.add(name)
            return _add(found, lambda: _attachment(name, attachments), f"attachment {name!r}")
        if src.lower().startswith("data:"):
            return _add(found, lambda: _data_uri(src), "an inline picture")
        return _add(found, lambda: _file(src, notebook_dir, root), f"picture file {src!r}")

    # A picture written inside code (`![](x.png)` in a sentence that explains how to paste) is text.
    code = [m.span() for m in CODE.finditer(text)]
    found.text = REFERENCE.sub(lambda m: m.group(0) if any(a <= m.start() < b for a, b in code) else replace(m), text)
    for name in attachments:
        if name not in used:
            shown = _add(found, lambda name=name: _attachment(name, attachments), f"attachment {name!r}")
            found.text += f"\n{shown}"
    return found
