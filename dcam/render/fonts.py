"""The font of the words in dcam's pictures (contact-sheet labels and titles, trajectory frames and sheets).

Pillow draws a string in one font and has no fallback: a letter that font lacks is its empty
"missing glyph" box. dcam's font is DejaVu Sans (shipped with matplotlib, a dependency), which has
Latin, Greek, Cyrillic, Arabic, Hebrew and more, but no Chinese, Japanese, Korean, Thai or
Devanagari letters - and LLaDA-V, MMaDA, Lumina-DiMOO and Dream-VL often answer in Chinese. So a
label is drawn as a chain of fonts (:class:`FontChain`):

1. the font file named by the environment variable ``DCAM_FONT``, where it is set;
2. DejaVu Sans;
3. the machine's installed fonts (matplotlib's font list and fontconfig's ``fc-list``, read once
   per process, only when a label has a letter the first two lack): fontconfig's fallback order
   for sans-serif first (``fc-match -s``: it follows the user's language), then regular upright
   sans-serif faces.

Each letter is drawn in the first font of the chain whose character map has it, the label in
runs of one font on one baseline. A letter no installed font has is drawn as its code point in
brackets (中文 -> ``[U+4E2D U+6587]``, in the first font of the chain that has these letters), never
as a box, and the first such letter of a process warns once (:class:`MissingGlyphWarning`) naming
the letters and what to install.

``dcam eval``'s matplotlib figures use the same fonts: :func:`figure_fonts` gives matplotlib the
chain as a list of families (it falls back letter by letter along such a list) and :func:`readable`
the texts with the letters no font has as code points.
"""
from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import unicodedata
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from PIL import ImageFont

from ..errors import DcamUserWarning, InputError, one_line, warn_at_caller

#: Environment variable naming a font file (.ttf, .otf or .ttc) drawn before DejaVu Sans.
FONT_ENV = "DCAM_FONT"
#: Font files FreeType opens and Pillow scales (fc-list also lists bitmap and Type 1 files).
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")

#: A font in a chain: (file, face index in a .ttc collection).
FontFile = Tuple[str, int]


class MissingGlyphWarning(DcamUserWarning):
    """A picture's word has letters no installed font draws; they are drawn as code points."""


_warned = False  # (the missing-letter warning is said once per process)


def dejavu_path() -> str:
    """DejaVu Sans, the file matplotlib ships (or where matplotlib finds it)."""
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    if os.path.exists(path):
        return path
    from matplotlib.font_manager import FontProperties, findfont

    return findfont(FontProperties(family="DejaVu Sans"), fallback_to_default=True)


@functools.lru_cache(maxsize=16)
def coverage(file: FontFile) -> FrozenSet[int]:
    """The code points ``file``'s character map gives a glyph (empty if FreeType cannot read it). Kept for the
    fonts of the chains and the few fallbacks letters are drawn in (a CJK face's set is about 5 MiB): a letter is
    looked up in the installed fonts by :func:`_glyphs_in`, which keeps nothing."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(k for k, glyph in FT2Font(file[0], face_index=file[1]).get_charmap().items() if glyph)
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.lru_cache(maxsize=None)
def sized(file: FontFile, size: int) -> Optional[ImageFont.FreeTypeFont]:
    """``file`` at ``size`` pixels, or None where Pillow cannot scale it (a colour-emoji font of
    fixed bitmap sizes only, a file gone since the font list was read)."""
    try:
        return ImageFont.truetype(file[0], size, index=file[1])
    except (OSError, ValueError):
        return None


def user_font() -> Optional[FontFile]:
    """The font file ``DCAM_FONT`` names (None when it is unset or empty), else an InputError:
    one line naming ``DCAM_FONT`` and why the file is not a font."""
    path = os.environ.get(FONT_ENV, "")
    if not path:
        return None
    return _checked_user_font(path)


@functools.lru_cache(maxsize=None)
def _checked_user_font(path: str) -> FontFile:
    if not os.path.isfile(path):
        raise InputError(f"{FONT_ENV}: {path!r} is not a file; name a font file (.ttf, .otf or .ttc) or unset it")
    why = None
    try:
        ImageFont.truetype(path, 16)
    except (OSError, ValueError) as exc:
        why = one_line(str(exc)) or type(exc).__name__
    if why is None and not coverage((path, 0)):
        why = "it has no character map"
    if why is not None:
        raise InputError(f"{FONT_ENV}: {path!r} is not a font Pillow can scale ({why}); "
                         "name a .ttf, .otf or .ttc file or unset it")
    return (path, 0)


def check_font_option() -> None:
    """Refuse a ``DCAM_FONT`` that is not a font before a picture is drawn or a file written."""
    user_font()


# ------------------------------------------------------------------ the installed fonts

def _glyphs_in(file: FontFile, letters) -> set:
    """Which of ``letters`` ``file``'s character map gives a glyph, the file opened for them alone (empty if
    FreeType cannot read it)."""
    from matplotlib.ft2font import FT2Font

    try:
        face = FT2Font(file[0], face_index=file[1])
    except (OSError, RuntimeError, ValueError):
        return set()
    return {c for c in letters if face.get_char_index(ord(c))}


def _fontconfig_files(*command: str) -> List[FontFile]:
    """The font files and face indices a fontconfig command lists (none where it is absent or fails)."""
    exe = shutil.which(command[0])
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--format", "%{file}|%{index}\n", *command[1:]], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    files = []
    for line in out.splitlines():
        path, _, index = line.rpartition("|")
        if path and index.isdigit():
            files.append((path, int(index)))
    return files


def _order(entry) -> tuple:
    """Sort key of a matplotlib FontEntry: upright, regular weight, normal width, sans-serif first."""
    from matplotlib.font_manager import weight_dict

    weight = entry.weight if isinstance(entry.weight, int) else weight_dict.get(entry.weight, 400)
    name = entry.name.lower()
    return (entry.style != "normal", abs(weight - 400), entry.stretch != "normal", "mono" in name,
            "sans" not in name, name, entry.fname)


@functools.lru_cache(maxsize=1)
def installed_fonts() -> Tuple[FontFile, ...]:
    """The machine's scalable fonts, read once per process: matplotlib's list (its cache, built from
    fontconfig and the font folders) and ``fc-list``'s (fonts installed since matplotlib's cache was
    built). Best fallback first: fontconfig's own fallback order for sans-serif (``fc-match -s``, which
    follows the user's language: Chinese faces before Japanese ones under a Chinese locale), then the
    others upright, regular and sans-serif first (:func:`_order`)."""
    import matplotlib
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    mpl_fonts = os.path.realpath(os.path.join(matplotlib.get_data_path(), "fonts", "ttf"))
    entries: Dict[FontFile, object] = {}
    for e in font_manager.fontManager.ttflist:
        entries.setdefault((os.path.realpath(e.fname), int(getattr(e, "index", 0) or 0)), e)
    for path, index in _fontconfig_files("fc-list"):
        file = (os.path.realpath(path), index)
        if file in entries or not path.lower().endswith(FONT_SUFFIXES):
            continue
        try:
            entries[file] = font_manager.ttfFontProperty(FT2Font(path, face_index=index))
        except Exception:  # noqa: BLE001 (a file FreeType cannot read is not a font to fall back on)
            continue

    def draws_letters(file: FontFile) -> bool:
        # Last Resort (matplotlib ships it) maps every code point to a box naming its Unicode block, the
        # box this chain is there to avoid; matplotlib's Computer Modern files map ASCII code points to
        # maths symbols, the wrong letter
        tex = os.path.basename(file[0]).startswith("cm") and os.path.dirname(file[0]) == mpl_fonts
        return not tex and "last resort" not in entries[file].name.lower()

    preferred = [(os.path.realpath(p), i) for p, i in _fontconfig_files("fc-match", "-s", "sans-serif")]
    preferred = list(dict.fromkeys(f for f in preferred if f in entries and draws_letters(f)))
    rest = sorted(set(filter(draws_letters, entries)) - set(preferred), key=lambda f: _order(entries[f]))
    return tuple(preferred + rest)


_first_installed: Dict[str, Optional[FontFile]] = {}  # letter -> the first installed font with its glyph


def _installed_font_for(letters: Sequence[str]) -> None:
    """Find, for each of ``letters`` not looked up before, the first installed font that has its glyph
    and that Pillow scales (one pass over the fonts for all of them, in order, stopping once each is found;
    each font is asked for these letters alone: a letter no font has read the whole character map of every
    installed font, and kept them all, some 5 MiB a CJK face)."""
    todo = {c for c in letters if c not in _first_installed}
    for file in installed_fonts() if todo else ():
        found = _glyphs_in(file, todo)
        if found and sized(file, 16) is not None:
            _first_installed.update(dict.fromkeys(found, file))
            todo -= found
            if not todo:
                break
    _first_installed.update(dict.fromkeys(todo))


# ------------------------------------------------------------------ chains

def _invisible(c: str) -> bool:
    """A letter that draws nothing (a joiner, a variation selector): dropped where no font has it."""
    cp = ord(c)
    return unicodedata.category(c) == "Cf" or 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF


def _is_cjk(c: str) -> bool:
    name = unicodedata.name(c, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO", "IDEOGRAPHIC", "HALFWIDTH",
                             "FULLWIDTH"))


def code_points(letters: str) -> str:
    """How letters no font has are drawn: ``[U+4E2D U+6587]``."""
    return "[" + " ".join(f"U+{ord(c):04X}" for c in letters) + "]"


#: The letters :func:`code_points` writes (DejaVu Sans has them all).
CODE_POINT_LETTERS = frozenset(map(ord, "[]U+0123456789ABCDEF "))


def _warn_missing(letters: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    distinct = list(dict.fromkeys(letters))
    shown = ", ".join(f"{c} U+{ord(c):04X}" for c in distinct[:8]) + (
        f" and {len(distinct) - 8} more" if len(distinct) > 8 else "")
    package = ("fonts-noto-cjk for Chinese, Japanese and Korean" if any(map(_is_cjk, letters))
               else "fonts-noto-core for most scripts")
    warn_at_caller(f"no installed font has a glyph for {shown}: dcam's pictures draw such letters as their code "
                   f"points ({code_points(letters[:1])}); install a font that has them (e.g. {package}) or set "
                   f"{FONT_ENV} to the path of one (this warning is shown once)", MissingGlyphWarning)


class FontChain(ImageFont.FreeTypeFont):
    """A font with fallbacks: as a Pillow font it is its first font (DejaVu Sans, or ``DCAM_FONT``'s);
    :meth:`runs` splits a text into runs of one font each (see the module's notes).
    :func:`text_length`, :func:`text_bbox` and :func:`draw_text` measure and draw with them."""

    def __init__(self, files: Sequence[FontFile], size: int):
        super().__init__(files[0][0], size, index=files[0][1])
        self.files = tuple(files)
        self._covers = [coverage(f) for f in self.files]
        self._covered = frozenset().union(*self._covers)
        self._printable_ascii = self._covers[0].issuperset(range(0x20, 0x7F))
        # the code points of letters no font has, and spaces no font has, are drawn in the first font with the
        # letters of code points: DCAM_FONT's may have no Latin ones (a single-script font), and drew boxes
        self._plain = next((f for f, cover in zip(self.files, self._covers) if cover >= CODE_POINT_LETTERS),
                           self.files[-1])
        # text -> (its runs, the letters no font has), for texts not wholly in the first font
        self._split: Dict[str, Tuple[Tuple[Tuple[str, FontFile], ...], str]] = {}

    def _file_of(self, c: str, prev: Optional[FontFile]) -> Optional[FontFile]:
        """The font of letter ``c`` after a letter of font ``prev``; None where no font has it."""
        cp = ord(c)
        # a combining mark stays with its letter's font where that font has it (drawn apart, it lost its place)
        if prev is not None and unicodedata.combining(c) and cp in coverage(prev):
            return prev
        for file, cover in zip(self.files, self._covers):
            if cp in cover:
                return file
        file = _first_installed.get(c)
        return file if file is not None and sized(file, self.size) is not None else None

    def _at_size(self, file: FontFile) -> ImageFont.FreeTypeFont:
        return self if file == self.files[0] else sized(file, self.size)

    def file_runs(self, text: str) -> List[Tuple[str, FontFile]]:
        """``text`` as (run, font file) pairs, left to right: each letter in the first font of the chain
        with its glyph; letters no font has as their code points (:func:`code_points`) in the first
        font, warning once per process; spaces no font has as spaces, invisible letters no font has
        dropped; code points and such spaces in the first font of the chain that has the letters of code
        points."""
        # the common case: every letter in the first font, one run, nothing looked up (tested at C speed:
        # wrapping a title measures its lines letter by letter)
        if (text.isascii() and text.isprintable() and self._printable_ascii) or self._covers[0].issuperset(
                map(ord, text)):
            return [(text, self.files[0])] if text else []
        hit = self._split.get(text)  # (fitting a label to its cell measures it again and again)
        if hit is not None:
            runs, missing = hit
            if missing:
                _warn_missing(missing)
            return list(runs)
        _installed_font_for([c for c in text if ord(c) not in self._covered])
        letters: List[Tuple[str, Optional[FontFile]]] = []  # (letter, its font's file; None: no font has it)
        prev = None
        for c in text:
            file = self._file_of(c, prev)
            if file is None and c.isspace():
                c, file = " ", self._plain
            if file is None and _invisible(c):
                continue
            letters.append((c, file))
            prev = file
        missing = "".join(c for c, file in letters if file is None)
        if missing:
            _warn_missing(missing)
        out: List[Tuple[str, FontFile]] = []
        for file, group in itertools.groupby(letters, key=lambda p: p[1]):
            run = "".join(c for c, _ in group)
            run, file = (code_points(run), self._plain) if file is None else (run, file)
            if out and out[-1][1] == file:  # (code points join that font's letters around them)
                out[-1] = (out[-1][0] + run, file)
            else:
                out.append((run, file))
        if len(self._split) >= 4096:  # (bounded: a long run of pictures meets ever new words)
            self._split.clear()
        self._split[text] = (tuple(out), missing)
        return out

    def runs(self, text: str) -> List[Tuple[str, ImageFont.FreeTypeFont]]:
        """:meth:`file_runs` with each file opened at this font's size (the first font: this one)."""
        return [(run, self._at_size(file)) for run, file in self.file_runs(text)]


def text_length(text: str, f) -> float:
    """``text``'s advance width in pixels, drawn by :func:`draw_text` in font ``f``."""
    if not isinstance(f, FontChain):
        return f.getlength(text) if hasattr(f, "getlength") else 6 * len(text)
    return sum(font.getlength(run) for run, font in f.runs(text))


def _placed(text: str, f) -> List[Tuple[float, str, ImageFont.FreeTypeFont]]:
    """(x offset, run, font) of each run of ``text`` drawn on one baseline."""
    runs = f.runs(text)
    x, placed = 0.0, []
    for k, (run, font) in enumerate(runs):
        placed.append((x, run, font))
        if k + 1 < len(runs):  # (a layout of its own: the last run's width is not needed)
            x += font.getlength(run)
    return placed


def text_bbox(text: str, f) -> Tuple[float, float, float, float]:
    """``text``'s ink box (left, top, right, bottom) drawn by :func:`draw_text` at (0, 0)."""
    if not isinstance(f, FontChain):
        return f.getbbox(text)
    runs = _placed(text, f)
    if not runs or (len(runs) == 1 and runs[0][2] is f):  # one run of the first font: Pillow's own box
        return f.getbbox(runs[0][1] if runs else "")
    ascent = f.getmetrics()[0]
    boxes = [(x + b[0], ascent + b[1], x + b[2], ascent + b[3])
             for x, run, font in runs for b in [font.getbbox(run, anchor="ls")]]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def draw_text(draw, xy: Tuple[float, float], text: str, f, fill) -> None:
    """``text`` drawn with ``draw`` in font ``f``, its first font's ascender line at ``xy`` (Pillow's
    default anchor), every run of a :class:`FontChain` on the first font's baseline."""
    if not isinstance(f, FontChain):
        draw.text(xy, text, fill=fill, font=f)
        return
    runs = _placed(text, f)
    if len(runs) == 1 and runs[0][2] is f:  # one run of the first font: drawn as Pillow draws it
        draw.text(xy, runs[0][1], fill=fill, font=f)
        return
    baseline = xy[1] + f.getmetrics()[0]
    for x, run, font in runs:
        draw.text((xy[0] + x, baseline), run, fill=fill, font=font, anchor="ls")


# ------------------------------------------------------------------ matplotlib figures (dcam eval's pictures)

@functools.lru_cache(maxsize=None)
def _family(file: FontFile) -> str:
    """matplotlib's family name of ``file``, the file added to matplotlib's font list where it is not in it."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = os.path.realpath(file[0])
    if not any(os.path.realpath(e.fname) == path for e in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(file[0])
    return font_manager.ttfFontProperty(FT2Font(file[0], face_index=file[1])).name


def figure_fonts(texts) -> Dict[str, List[str]]:
    """matplotlib settings (for ``matplotlib.rc_context``) that draw ``texts`` in the fonts the pictures'
    labels use: ``font.family`` the list ``DCAM_FONT``'s family (where set), DejaVu Sans, then the
    installed fonts of the letters those two lack; matplotlib draws each letter in the first family
    of the list that has it."""
    chain = font(12)
    if not isinstance(chain, FontChain):
        return {}
    files = list(chain.files)
    for text in texts:
        files += [file for _, file in chain.file_runs(text)]
    return {"font.family": list(dict.fromkeys(_family(f) for f in files))}


def readable(text: str) -> str:
    """``text`` as the pictures draw it: letters no font has as their code points (warning once),
    invisible letters no font has dropped (for a text drawn by matplotlib, in :func:`figure_fonts`)."""
    chain = font(12)
    return "".join(run for run, _ in chain.runs(text)) if isinstance(chain, FontChain) else text


@functools.lru_cache(maxsize=None)
def _chain(size: int, user: Optional[FontFile]):
    try:
        files = ([user] if user else []) + [(dejavu_path(), 0)]
        return FontChain(files, size)
    except (OSError, ImportError):  # no FreeType, or the file is gone: Pillow's own font
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # old Pillow: fixed-size bitmap font
            return ImageFont.load_default()


def font(size: int):
    """The font of labels and titles at ``size`` pixels: a :class:`FontChain` of ``DCAM_FONT``'s file
    (where set; a file that is not a font is an InputError), DejaVu Sans and the installed fonts."""
    return _chain(int(size), user_font())


__all__ = ["font", "FontChain", "MissingGlyphWarning", "text_length", "text_bbox", "draw_text", "check_font_option",
           "installed_fonts", "code_points", "figure_fonts", "readable", "FONT_ENV"]
