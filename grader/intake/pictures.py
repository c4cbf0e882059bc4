"""Pictures in written answers (課題1's diagram): notebook attachments, inline data URIs and image files
beside the notebook, each checked with Pillow and re-encoded as a bounded PNG.

Re-encoding means a report never carries the student's bytes: whatever a file claims to be, what a
TA's browser opens is a PNG that Pillow wrote.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from grader.intake.budget import Deadline

MAX_PICTURES = 6  # per answer cell; a diagram needs one or two
MAX_PICTURE_BYTES = 10 * 1024**2
MAX_PIXELS = 40_000_000  # decoded size; refused before decoding (decompression bombs)
MAX_SIDE = 1600  # longest side of the PNG written to the report
FORMATS = {"PNG", "JPEG", "GIF", "WEBP", "BMP"}

# Markdown `![alt](src "title")` and HTML `<img src="...">`, the two ways notebooks show a picture. They are
# found by a scanner (`references`), not one regular expression: backtracking made `"![" * n` quadratic,
# and an answer is untrusted text read in the parent.
_START = re.compile(r"!\[|<img\b", re.IGNORECASE)
_HTML_SRC = re.compile(r"\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
# Fenced blocks and inline code spans. Linear: a failed fence means no closing fence follows, and a
# failed inline span ends at a newline with no backtick before it.
CODE = re.compile(r"```.*?```|~~~.*?~~~|`[^`\n]+`", re.DOTALL)

MAX_SUBMISSION_PICTURES = 30  # references resolved in the whole submission (several answers, several parts)
MAX_SUBMISSION_PIXELS = 100_000_000  # decoded in the whole submission: two and a half pictures of MAX_PIXELS


class _Next:
    """`pattern.search(text, pos)` for the scanner: each character is scanned about once in all.

    The scanner asks for positions that mostly increase; the last answer holds for any position
    between the last question and that answer, and repeated questions are remembered.
    """

    def __init__(self, text: str, pattern: str):
        self.text, self.pattern = text, re.compile(pattern)
        self.last = (len(text) + 1, -1)
        self.seen: dict[int, int] = {}

    def __call__(self, pos: int) -> int:
        start, found = self.last
        if start <= pos and (found == -1 or pos <= found):
            return found
        if pos in self.seen:
            return self.seen[pos]
        match = self.pattern.search(self.text, pos)
        found = match.start() if match else -1
        self.last = (pos, found)
        self.seen[pos] = found
        return found


def references(text: str) -> list[tuple[int, int, str]]:
    """(start, end, src) of each picture reference, left to right, in time linear in len(text)."""
    close, stop, quote = _Next(text, r"\]"), _Next(text, r"[)\s>]"), _Next(text, '"')
    solid, tag_end, next_img = _Next(text, r"\S"), _Next(text, ">"), _Next(text, r"(?i)<img\b")
    failed_after: set[int] = set()  # "](" positions already known to start no reference
    found: list[tuple[int, int, str]] = []
    resume = 0
    for candidate in _START.finditer(text):
        start = candidate.start()
        if start < resume:
            continue
        if text[start] == "!":
            bracket = close(start + 2)
            if bracket == -1 or text[bracket + 1 : bracket + 2] != "(" or bracket in failed_after:
                continue
            end_src = _markdown_target(text, bracket + 2, stop, quote, solid)
            if end_src is None:
                failed_after.add(bracket)
                continue
            end, src = end_src
        else:
            end = tag_end(start)
            later = next_img(start + 4)
            if end == -1 or (later != -1 and later < end):
                continue  # unclosed, or another <img starts before this one closes
            attribute = _HTML_SRC.search(text, start + 4, end)
            if attribute is None:
                continue
            end, src = end + 1, attribute.group(1)
        found.append((start, end, src))
        resume = end
    return found


def _markdown_target(text: str, at: int, stop: _Next, quote: _Next, solid: _Next) -> tuple[int, str] | None:
    """After `](`: `<`? src `>`? (space "title")? space `)`; the end of the reference and src, or None."""
    begin = solid(at)
    if begin == -1:
        return None
    if text[begin] == "<":
        begin += 1
    end = stop(begin)
    end = len(text) if end == -1 else end
    if end == begin:
        return None
    src = text[begin:end]
    after = end + 1 if text[end : end + 1] == ">" else end
    following = solid(after)
    if following > after and text[following] == '"':
        closing = quote(following + 1)
        if closing != -1:
            last = solid(closing + 1)
            if last != -1 and text[last] == ")":
                return last + 1, src
    if following != -1 and text[following] == ")":
        return following + 1, src
    return None


class PictureError(Exception):
    """A picture that cannot be shown; the message says why, for the student's report."""


@dataclass
class AnswerPictures:
    """An answer's text with each picture replaced by `[picture N]`, the pictures as PNG, and warnings."""

    text: str
    pictures: list[bytes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class PictureBudget:
    """One submission's pictures: each distinct picture is decoded once, and the submission's caps
    (references, decoded pixels, the intake's deadline) apply before anything is decoded."""

    def __init__(self, deadline: Deadline | None = None):
        self.deadline = deadline
        self.references = 0
        self.pixels = 0
        self.decoded: dict[str, bytes | PictureError] = {}

    def png(self, data: bytes) -> bytes:
        key = hashlib.sha256(data).hexdigest()
        if key not in self.decoded:
            if self.deadline:
                self.deadline.check("a picture")
            try:
                self.decoded[key] = to_png(data, self._spend)
            except PictureError as exc:
                self.decoded[key] = exc
        result = self.decoded[key]
        if isinstance(result, PictureError):
            raise result
        return result

    def _spend(self, width: int, height: int) -> None:
        if self.pixels + width * height > MAX_SUBMISSION_PIXELS:
            raise PictureError(f"the submission's pictures together are over {MAX_SUBMISSION_PIXELS:,} pixels")
        self.pixels += width * height


def to_png(data: bytes, allow=None) -> bytes:
    """A PNG of at most MAX_SIDE pixels a side from the bytes of a PNG, JPEG, GIF, WebP or BMP picture.

    `allow(width, height)`, when given, is asked before decoding and may refuse with PictureError."""
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
            if allow:
                allow(width, height)
            image.draft(None, (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale (no-op for others)
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


def _add(found: AnswerPictures, load, label: str, budget: PictureBudget, limit: int) -> str:
    """Add the picture `load()` returns to `found`; the text that stands for it in the answer.

    The caps are checked before `load()` runs: a picture over them is never read nor decoded."""
    if len(found.pictures) >= limit:
        found.warnings.append(f"{label} not shown: more than {MAX_PICTURES} pictures")
        return f"[picture not shown: over {MAX_PICTURES}]"
    if budget.references >= MAX_SUBMISSION_PICTURES:
        found.warnings.append(f"{label} not shown: more than {MAX_SUBMISSION_PICTURES} pictures in the submission")
        return f"[picture not shown: over {MAX_SUBMISSION_PICTURES} in the submission]"
    budget.references += 1
    try:
        found.pictures.append(budget.png(load()))
    except PictureError as exc:
        found.warnings.append(f"{label} not shown: {exc}")
        return "[picture not shown]"
    return f"[picture {len(found.pictures)}]"


def output_pictures(source: str, outputs, budget: PictureBudget | None = None, limit: int = MAX_PICTURES) -> AnswerPictures:
    """A code answer cell: its source as written (it may be parsed, as 課題1's shape table is) and the
    pictures its saved outputs show (a diagram drawn with matplotlib)."""
    budget = budget or PictureBudget()
    found = AnswerPictures(text=source)
    for number, output in enumerate(outputs if isinstance(outputs, list) else [], start=1):
        data = output.get("data") if isinstance(output, dict) else None
        payload = next((v for k, v in data.items() if k in ("image/png", "image/jpeg")), None) if isinstance(
            data, dict) else None
        if payload is not None:
            _add(found, lambda payload=payload: _decode(payload, "its base64 data is broken"),
                 f"the picture in output {number}", budget, limit)
    return found


def extract_pictures(text: str, attachments: dict | None = None, notebook_dir: Path | None = None,
                     root: Path | None = None, budget: PictureBudget | None = None,
                     limit: int = MAX_PICTURES) -> AnswerPictures:
    """The pictures an answer cell shows, in order: its references (attachments, data URIs, files under
    `root` relative to `notebook_dir`), then attachments it does not reference. Web addresses are left
    as text (never fetched). At most `limit` pictures are decoded (the room left in the answer)."""
    budget = budget or PictureBudget()
    attachments = attachments if isinstance(attachments, dict) else {}
    found = AnswerPictures(text="")
    used: set[str] = set()

    def replace(src: str, original: str) -> str:
        if re.match(r"(?i)https?://", src):
            return original
        if src.lower().startswith("attachment:"):
            name = src.split(":", 1)[1]
            used.add(name)
            return _add(found, lambda: _attachment(name, attachments), f"attachment {name!r}", budget, limit)
        if src.lower().startswith("data:"):
            return _add(found, lambda: _data_uri(src), "an inline picture", budget, limit)
        return _add(found, lambda: _file(src, notebook_dir, root), f"picture file {src!r}", budget, limit)

    # A picture written inside code (`![](x.png)` in a sentence that explains how to paste) is text.
    code = iter([m.span() for m in CODE.finditer(text)])
    span = next(code, None)
    pieces, position = [], 0
    for start, end, src in references(text):
        while span is not None and span[1] <= start:  # both lists are in order: one pass over each
            span = next(code, None)
        if span is not None and span[0] <= start:
            continue
        pieces += [text[position:start], replace(src, text[start:end])]
        position = end
    pieces.append(text[position:])
    found.text = "".join(pieces)
    for name in attachments:
        if name not in used:
            shown = _add(found, lambda name=name: _attachment(name, attachments), f"attachment {name!r}", budget,
                         limit)
            found.text += f"\n{shown}"
    return found
