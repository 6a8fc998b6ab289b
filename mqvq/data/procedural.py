"""Deterministic synthetic images: structured foreground objects on redundant backgrounds.

This is the case adaptive masking targets: most of each image (flat colour, gradient or a
low-contrast tiled texture) can be restored from its neighbours, while the objects (ellipses,
rotated rectangles, triangles and cartoon faces) cannot. Every image comes with a foreground
mask so metrics can ask whether kept tokens land on objects, a label (the kind of the
largest object) for class-conditional tests, and a caption naming what was drawn (the largest
object's colour, kind and place, the object count and the background) with the same facts as
integer attributes, so that text conditioning can be trained and checked offline. Same (seed,
index, resolution) -> same bytes: each image draws from its own `numpy.random.default_rng([seed, index])`.

Style `textured` is a test bed where importance is not brightness: every background is a
high-contrast stripe, checker or gradient pattern, and object and background colours come from the
same range, so a selector that follows brightness or raw detail cannot find the objects, while the
backgrounds stay restorable from their neighbours (periodic or linear) and the objects do not.

Styles `textured-objects` (textured objects on plain backgrounds), `textured-both` and `flat` (flat
objects on plain backgrounds, colours from the same range) complete the crossing {object textured,
flat} x {background textured, flat}, so that "the object" and "what is hard to restore" can be told
apart: a selector that follows restorability keeps the textured part whichever it is; one that
follows objectness keeps the object in every corner.

Placement `inset` (the original rule) draws centres in [-0.9 + r, 0.9 - r]: with the textured styles'
large objects that keeps them near the middle, so a fixed centre mask finds them. Placement
`uniform` draws smaller objects whose centres are uniform over the positions that keep them wholly
inside the canvas, so position says much less about where the object is. `holdout = top-left`
(uniform placement only) keeps every object of the training split wholly out of the top-left
quadrant, and puts every object's centre of the test split inside it (Spriteworld's "new position"
test): a selector that learned where objects usually are fails there. Objects wholly inside still
avoid the border, so the foreground frequency per position is not flat (`mqvq data show` prints it);
placement `wrap` draws centres uniform over the whole canvas on a torus (an object leaving one edge
comes back at the opposite one), which makes every position equally likely to be foreground.

The data is synthetic and is labelled as such wherever results are reported.
"""

from __future__ import annotations

import colorsys
import functools

import numpy as np

KINDS = ("ellipse", "rectangle", "triangle", "face")
STYLES = ("mixed", "textured", "textured-objects", "textured-both", "flat")
PLACEMENTS = ("inset", "uniform", "wrap")
HOLDOUTS = ("none", "top-left")
# how far each kind reaches from its centre, in units of its radius: the rectangle's corner at
# e = 1 is sqrt(2) away, the face's head 1.15 (uniform placement keeps every object wholly inside)
REACH = {"ellipse": 1.0, "rectangle": 2**0.5, "triangle": 1.0, "face": 1.15}
HOLDOUT_REACH = 0.45  # with a held-out quadrant, no object reaches further than this from its centre
SUPERSAMPLE = 2  # render at 2x and box-filter down for anti-aliased edges

# what a caption says, as the attribute classes a caption-following check scores
KIND_WORDS = (
    "circle",
    "rectangle",
    "triangle",
    "face",
)  # ellipses of aspect 0.5-1 are called circles, as a person would
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white")
PLACES = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
BACKGROUNDS = ("plain", "gradient", "striped", "checkered")
COUNTS = ("one", "two", "three")
ATTRIBUTES = {"kind": KIND_WORDS, "colour": COLOURS, "place": PLACES, "count": COUNTS, "background": BACKGROUNDS}
_HUES = (
    (15, 0),
    (45, 1),
    (70, 2),
    (160, 3),
    (200, 4),
    (255, 5),
    (290, 6),
    (345, 7),
    (360, 0),
)  # upper bound in degrees -> colour


def colour_name(rgb: np.ndarray) -> int:
    """Index into COLOURS: pale colours are white, the rest are named by hue."""
    h, s, _ = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if s < 0.25:
        return COLOURS.index("white")
    deg = h * 360.0
    return next(c for bound, c in _HUES if deg < bound)


def place_of(cx: float, cy: float) -> int:
    """Index into PLACES from an object's centre in [-1, 1]^2 (y grows downwards)."""
    col = 0 if cx < -0.25 else (2 if cx > 0.25 else 1)
    row = 0 if cy < -0.25 else (2 if cy > 0.25 else 1)
    return 3 * row + col


def caption(attrs: dict[str, int]) -> str:
    """'a red circle at the top left and two more shapes on a striped background'."""
    place = PLACES[attrs["place"]]
    where = "in the centre" if place == "centre" else f"at the {place}"
    more = ("", " and one more shape", " and two more shapes")[attrs["count"]]
    return (
        f"a {COLOURS[attrs['colour']]} {KIND_WORDS[attrs['kind']]} {where}{more} "
        f"on a {BACKGROUNDS[attrs['background']]} background"
    )


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """A saturated random colour, at least some distance from `avoid`."""
    for _ in range(16):
        c = rng.uniform(0.0, 1.0, 3)
        c[rng.integers(3)] = rng.uniform(0.75, 1.0)  # at least one strong channel
        if avoid is None or np.abs(c - avoid).sum() > 0.6:
            return c
    return 1.0 - avoid


def _background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(image, base colour, index into BACKGROUNDS)."""
    base = rng.uniform(0.1, 0.9, 3)
    kind = int(rng.integers(3))
    if kind == 0:  # flat colour
        img = np.broadcast_to(base, x.shape + (3,)).copy()
    elif kind == 1:  # low-frequency linear gradient
        other = np.clip(base + rng.uniform(-0.4, 0.4, 3), 0, 1)
        a = rng.uniform(0, 2 * np.pi)
        t = ((np.cos(a) * x + np.sin(a) * y) + 1.0) / 2.0
        img = base + t[..., None] * (other - base)
    else:  # low-contrast tiled texture: stripes or checker
        period = rng.uniform(0.15, 0.35)
        contrast = rng.uniform(0.05, 0.12)
        if rng.integers(2) == 0:
            a = rng.uniform(0, np.pi)
            pattern = np.sign(np.sin(2 * np.pi * (np.cos(a) * x + np.sin(a) * y) / period))
        else:
            pattern = np.sign(np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period))
            kind = 3
        img = base + contrast * pattern[..., None]
    return np.clip(img, 0, 1), base, kind


def _textured_background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Style `textured`: a gradient, stripes or checks between two colours of the objects' range,
    with a contrast (0.25-0.45 per channel on average) like an object's edge against it."""
    base = rng.uniform(0.1, 0.9, 3)
    other = np.clip(base + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.25, 0.45, 3), 0, 1)
    kind = int(rng.integers(1, 4))  # gradient, striped, checkered
    a = rng.uniform(0, 2 * np.pi)
    if kind == 1:
        t = ((np.cos(a) * x + np.sin(a) * y) + 1.0) / 2.0
    else:
        period = rng.uniform(0.3, 0.6)  # 5-10 px at 32 px: a texture the 4 px tokens can see
        if kind == 2:
            t = np.sin(2 * np.pi * (np.cos(a) * x + np.sin(a) * y) / period) > 0
        else:
            t = (np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period)) > 0
        t = t.astype(float)
    return base + t[..., None] * (other - base), (base + other) / 2, kind


def _object_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """Style `textured`: from the background's range (no saturated channel), away from its mean colour."""
    for _ in range(16):
        c = rng.uniform(0.1, 0.9, 3)
        if np.abs(c - avoid).sum() > 0.6:
            return c
    return np.clip(1.0 - avoid, 0.1, 0.9)


def _offsets(x: np.ndarray, y: np.ndarray, cx: float, cy: float, wrap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's offset from the centre; on the torus (wrap) the shortest one, so an object
    leaving one edge comes back at the opposite one."""
    dx, dy = x - cx, y - cy
    if wrap:
        dx, dy = (dx + 1.0) % 2.0 - 1.0, (dy + 1.0) % 2.0 - 1.0
    return dx, dy


def _shape(
    rng: np.random.Generator,
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    wrap: bool = False,
) -> np.ndarray:
    """Boolean coverage of one object, in the object's rotated frame."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = _offsets(x, y, cx, cy, wrap)
    u = (c * dx + s * dy) / r
    v = (-s * dx + c * dy) / r
    if kind == "ellipse":
        e = rng.uniform(0.5, 1.0)
        return u**2 + (v / e) ** 2 <= 1.0
    if kind == "rectangle":
        e = rng.uniform(0.4, 1.0)
        return (np.abs(u) <= 1.0) & (np.abs(v) <= e)
    if kind == "triangle":  # equilateral-ish: three half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3
            inside &= (np.cos(a) * u + np.sin(a) * v) <= 0.5
        return inside
    # face: head ellipse; features are painted separately
    return u**2 + (v / 1.15) ** 2 <= 1.0


def _face_features(
    img: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    colour: np.ndarray,
    wrap: bool = False,
) -> None:
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = _offsets(x, y, cx, cy, wrap)
    u = (c * dx + s * dy) / r
    v = (-s * dx + c * dy) / r
    dark = colour * 0.25
    for ex in (-0.38, 0.38):  # eyes
        img[(u - ex) ** 2 + (v + 0.3) ** 2 <= 0.15**2] = dark
    d = np.sqrt(u**2 + (v - 0.05) ** 2)  # mouth: lower arc
    img[(np.abs(d - 0.55) <= 0.08) & (v > 0.25)] = dark


def _downsample(img: np.ndarray, fg: np.ndarray, resolution: int, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Box-filter the supersampled picture and mask down to the requested resolution: uint8 pixels,
    and foreground where at least half the fine pixels are. `clip` (the crossed styles) clips to
    [0, 1] first; the original styles never did, and keep their bytes."""
    img = img.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    fg = fg.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(1, 3)) >= 0.5
    return np.round((np.clip(img, 0, 1) if clip else img) * 255.0).astype(np.uint8), fg


def _pattern(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, int]:
    """Stripes or checks between `base` and a second colour 0.25-0.45 away per channel (the textured
    background's contrast and period), as (image, index into BACKGROUNDS)."""
    other = np.clip(base + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.25, 0.45, 3), 0, 1)
    kind = int(rng.integers(2, 4))  # striped, checkered
    a = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(0.3, 0.6)
    if kind == 2:
        t = np.sin(2 * np.pi * (np.cos(a) * x + np.sin(a) * y) / period) > 0
    else:
        t = (np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period)) > 0
    return base + t.astype(float)[..., None] * (other - base), kind


def _centre(rng: np.random.Generator, reach: float, holdout: str, split_test: bool) -> tuple[float, float]:
    """Uniform placement: a centre keeping an object of this reach wholly inside [-1, 1]^2; with a
    held-out top-left quadrant, training objects stay wholly out of it (distance from the centre to
    the quadrant at least `reach`) and test objects have their centre in it."""
    lo, hi = -1.0 + reach, 1.0 - reach
    for _ in range(1000):
        cx, cy = rng.uniform(lo, hi, 2)
        if holdout == "none":
            return cx, cy
        if split_test and cx < 0 and cy < 0:
            return cx, cy
        if not split_test and max(cx, 0.0) ** 2 + max(cy, 0.0) ** 2 >= reach**2:
            return cx, cy
    raise RuntimeError("no placement found")  # cannot happen for the radii drawn here


def _render_crossed(
    seed: int, index: int, resolution: int, style: str, placement: str, holdout: str, split_test: bool
) -> tuple[np.ndarray, np.ndarray, int, dict[str, int]]:
    """The crossed styles and the uniform placement (the original styles at placement `inset` keep
    their bytes in `render`): objects and backgrounds flat or textured, colours from one range."""
    rng = np.random.default_rng([seed, index])
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    bg_textured = style in ("textured", "textured-both")
    obj_textured = style in ("textured-objects", "textured-both")
    if bg_textured:
        img, bg, bg_kind = _textured_background(rng, x, y)
    else:
        bg = rng.uniform(0.1, 0.9, 3)
        img, bg_kind = np.broadcast_to(bg, x.shape + (3,)).copy(), 0
    fg = np.zeros(x.shape, dtype=bool)
    count = int(rng.integers(1, 4))
    attrs = {"count": count - 1, "background": bg_kind}
    low, high = (0.4, 0.75) if placement == "inset" else (0.2, 0.4)  # uniform: small enough to go anywhere
    radii = np.sort(rng.uniform(low, high, count))[::-1]
    label = -1
    for r in radii:
        kind_id = int(rng.integers(len(KINDS)))
        kind = KINDS[kind_id]
        if label < 0:
            label = kind_id
        if placement == "inset":
            cx, cy = rng.uniform(-0.9 + r, 0.9 - r, 2)
        elif placement == "wrap":
            cx, cy = rng.uniform(-1.0, 1.0, 2)
        else:
            if holdout != "none":  # small enough to fit beside the held-out quadrant in every direction
                r = min(r, HOLDOUT_REACH / REACH[kind])
            cx, cy = _centre(rng, REACH[kind] * r, holdout, split_test)
        wrap = placement == "wrap"
        angle = rng.uniform(0, 2 * np.pi)
        colour = _object_colour(rng, bg)
        if len(attrs) == 2:
            attrs |= {"kind": kind_id, "colour": colour_name(colour), "place": place_of(cx, cy)}
        cover = _shape(rng, kind, x, y, cx, cy, r, angle, wrap)
        paint = _pattern(rng, x, y, colour)[0] if obj_textured else colour
        img[cover] = paint[cover] if obj_textured else paint
        if kind == "face":
            _face_features(img, x, y, cx, cy, r, angle, colour, wrap)
        fg |= cover
    return (*_downsample(img, fg, resolution, clip=True), label, attrs)


def render(
    seed: int,
    index: int,
    resolution: int,
    style: str = "mixed",
    placement: str = "inset",
    holdout: str = "none",
    split_test: bool = False,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, int]]:
    """One image: (uint8 HxWx3, bool HxW foreground mask, label = kind of the largest object,
    attributes: indices into ATTRIBUTES' vocabularies, which `caption` spells out). `split_test`
    matters only with a held-out quadrant (which side of it the objects go)."""
    if style not in STYLES or placement not in PLACEMENTS or holdout not in HOLDOUTS:
        raise ValueError((style, placement, holdout))
    if style not in ("mixed", "textured") or placement != "inset":
        return _render_crossed(seed, index, resolution, style, placement, holdout, split_test)
    textured = style == "textured"
    rng = np.random.default_rng([seed, index])
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0  # pixel centres in [-1, 1]
    y, x = np.meshgrid(coords, coords, indexing="ij")
    img, bg, bg_kind = (_textured_background if textured else _background)(rng, x, y)
    fg = np.zeros(x.shape, dtype=bool)
    count = int(rng.integers(1, 4))
    attrs = {"count": count - 1, "background": bg_kind}
    low, high = (0.4, 0.75) if textured else (0.18, 0.45)  # textured: objects cover about as much as a garment does
    radii = np.sort(rng.uniform(low, high, count))[::-1]  # largest first: it sets the label
    label = -1
    for r in radii:
        kind_id = int(rng.integers(len(KINDS)))
        kind = KINDS[kind_id]
        if label < 0:
            label = kind_id
        cx, cy = rng.uniform(-0.9 + r, 0.9 - r, 2)
        angle = rng.uniform(0, 2 * np.pi)
        colour = _object_colour(rng, bg) if textured else _colour(rng, bg)
        if len(attrs) == 2:  # the largest object: the one the caption names
            attrs |= {"kind": kind_id, "colour": colour_name(colour), "place": place_of(cx, cy)}
        cover = _shape(rng, kind, x, y, cx, cy, r, angle)
        img[cover] = colour
        if kind == "face":
            _face_features(img, x, y, cx, cy, r, angle, colour)
        fg |= cover
    return (*_downsample(img, fg, resolution, clip=False), label, attrs)


@functools.lru_cache(maxsize=8)
def render_all(
    seed: int,
    start: int,
    count: int,
    resolution: int,
    style: str = "mixed",
    placement: str = "inset",
    holdout: str = "none",
    split_test: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Images start..start+count-1 as (N,3,H,W) uint8, (N,H,W) bool, (N,) int64 labels and
    {attribute: (N,) int64}.

    Cached per process (a study renders the same split for every row); callers must not modify the arrays."""
    imgs = np.empty((count, 3, resolution, resolution), dtype=np.uint8)
    fgs = np.empty((count, resolution, resolution), dtype=bool)
    labels = np.empty(count, dtype=np.int64)
    attrs = {name: np.empty(count, dtype=np.int64) for name in ATTRIBUTES}
    for i in range(count):
        im, fg, lab, att = render(seed, start + i, resolution, style, placement, holdout, split_test)
        imgs[i] = im.transpose(2, 0, 1)
        fgs[i] = fg
        labels[i] = lab
        for name, v in att.items():
            attrs[name][i] = v
    return imgs, fgs, labels, attrs


def render_many(seed: int, start: int, count: int, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`render_all` without the attributes."""
    return render_all(seed, start, count, resolution)[:3]


def captions(attrs: dict[str, np.ndarray]) -> list[str]:
    """One caption per image from `render_all`'s attributes."""
    n = len(next(iter(attrs.values())))
    return [caption({name: int(a[i]) for name, a in attrs.items()}) for i in range(n)]
