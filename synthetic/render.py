"""PIL drawing of one synthetic pedestrian view: the identity's look plus per-image scene changes.

Drawn at twice the output size and downsampled, so thin parts (straps, stripes) survive
as anti-aliased detail rather than aliasing noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from synthetic.captions import COLOURS, HAIR_COLOURS, SKINS, Identity

RGB = tuple[int, int, int]
SUPERSAMPLE = 2
BUILD_WIDTH = {"slim": 0.85, "average": 1.0, "heavy": 1.25}


def _shade(c: RGB, f: float) -> RGB:
    return tuple(int(max(0, min(255, v * f))) for v in c)  # type: ignore[return-value]


def _muted(rng: np.random.Generator, low: int, high: int) -> RGB:
    """A grey level in [low, high) with a tint of at most +-15 per channel."""
    grey = int(rng.integers(low, high))
    return tuple(int(np.clip(grey + t, 0, 255)) for t in rng.integers(-15, 16, 3))  # type: ignore[return-value]


def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Street-like scene: a wall colour, a floor band and one random texture (plain, bricks, tiles, noise).

    Scene colours are desaturated (grey with a slight tint), like most street scenes, so
    the colour words of a caption refer to the person, not to the background.
    """
    w, h = size
    wall = _muted(rng, 50, 210)
    img = Image.new("RGB", size, wall)
    d = ImageDraw.Draw(img)
    kind = rng.integers(4)
    line = _shade(wall, 0.8)
    if kind == 1:
        step = int(rng.integers(10, 24))
        for y in range(0, h, step):
            d.line([(0, y), (w, y)], fill=line, width=2)
            off = (y // step) % 2 * step
            for x in range(off, w, 2 * step):
                d.line([(x, y), (x, y + step)], fill=line, width=2)
    elif kind == 2:
        step = int(rng.integers(16, 40))
        for x in range(0, w, step):
            d.line([(x, 0), (x, h)], fill=line, width=1)
        for y in range(0, h, step):
            d.line([(0, y), (w, y)], fill=line, width=1)
    elif kind == 3:
        noise = rng.integers(-25, 26, (h // 8 + 1, w // 8 + 1, 1))
        arr = np.clip(np.asarray(img, dtype=np.int16) + np.kron(noise, np.ones((8, 8, 1), dtype=np.int16))[:h, :w], 0, 255)
        img = Image.fromarray(arr.astype(np.uint8))
        d = ImageDraw.Draw(img)
    floor_y = int(h * rng.uniform(0.72, 0.9))
    d.rectangle([0, floor_y, w, h], fill=_muted(rng, 60, 190))
    return img


def _limb(d: ImageDraw.ImageDraw, start: tuple[float, float], angle: float, length: float,
          width: float, colours: list[tuple[float, RGB]]) -> tuple[float, float]:
    """Draw a limb from ``start`` at ``angle`` (0 = straight down) as consecutive coloured segments."""
    x, y = start
    dx, dy = math.sin(angle) * length, math.cos(angle) * length
    t0 = 0.0
    for t1, colour in colours:
        d.line([(x + dx * t0, y + dy * t0), (x + dx * t1, y + dy * t1)], fill=colour, width=max(1, int(width)))
        t0 = t1
    return x + dx, y + dy


def _pattern(d: ImageDraw.ImageDraw, box: tuple[float, float, float, float], pattern: str, colour: RGB, unit: float) -> None:
    x0, y0, x1, y1 = box
    stripe = _shade(colour, 0.45) if sum(colour) > 300 else _shade((255, 255, 255), 0.9)
    step = max(3, int(unit * 0.06))
    if pattern in ("striped", "checked"):
        for y in np.arange(y0 + step / 2, y1, step):
            d.line([(x0, y), (x1, y)], fill=stripe, width=max(1, step // 3))
    if pattern == "checked":
        for x in np.arange(x0 + step / 2, x1, step):
            d.line([(x, y0), (x, y1)], fill=stripe, width=max(1, step // 3))


@dataclass(frozen=True)
class _Body:
    """Where the parts of one view of a person go (supersampled pixels), and their colours."""
    p: Identity
    unit: float  # person height
    cx: float
    top: float

    @property
    def bw(self) -> float:
        return BUILD_WIDTH[self.p.build]

    @property
    def skin(self) -> RGB:
        return SKINS[self.p.skin]

    @property
    def hair(self) -> RGB:
        return HAIR_COLOURS[self.p.hair_colour][0]

    @property
    def upper(self) -> RGB:
        return COLOURS[self.p.upper_colour][0]

    @property
    def lower(self) -> RGB:
        return COLOURS[self.p.lower_colour][0]

    @property
    def head_r(self) -> float:
        return self.unit * 0.065

    @property
    def head_c(self) -> tuple[float, float]:
        return (self.cx, self.top + self.unit * 0.03 + self.head_r)

    @property
    def neck_y(self) -> float:
        return self.head_c[1] + self.head_r

    @property
    def shoulder_y(self) -> float:
        return self.neck_y + self.unit * 0.03

    @property
    def hip_y(self) -> float:
        return self.top + self.unit * 0.52

    @property
    def torso_w(self) -> float:
        return self.unit * 0.12 * self.bw

    @property
    def limb_w(self) -> float:
        return self.unit * 0.05 * self.bw


def _draw_back(d: ImageDraw.ImageDraw, b: _Body, rng: np.random.Generator) -> None:
    """What lies behind the body: long hair and a backpack."""
    p, cx, unit, head_r = b.p, b.cx, b.unit, b.head_r
    if p.hair_style == "long":
        d.rectangle([cx - head_r * 1.1, b.head_c[1] - head_r * 0.3, cx + head_r * 1.1, b.shoulder_y + unit * 0.07], fill=b.hair)
    if p.bag == "backpack":
        bag = COLOURS[p.bag_colour][0]
        side = 1 if rng.random() < 0.5 else -1
        x0, x1 = sorted((cx + side * b.torso_w * 0.7, cx + side * b.torso_w * 1.25))
        d.rectangle([x0, b.shoulder_y + unit * 0.02, x1, b.hip_y - unit * 0.05], fill=bag)


def _draw_legs(d: ImageDraw.ImageDraw, b: _Body, rng: np.random.Generator) -> None:
    """Legs (trousers, shorts or bare under a skirt), shoes, and the skirt."""
    p, cx, unit, torso_w, limb_w, hip_y = b.p, b.cx, b.unit, b.torso_w, b.limb_w, b.hip_y
    shoes = COLOURS[p.shoes_colour][0]
    spread = rng.uniform(0.0, 0.35)
    for side, angle in ((-1, -spread * rng.uniform(0.5, 1.0)), (1, spread * rng.uniform(0.5, 1.0))):
        cover = {"trousers": 1.0, "shorts": 0.4, "skirt": 0.0}[p.lower]
        segs = [(cover, b.lower), (1.0, b.skin)] if cover < 1 else [(1.0, b.lower)]
        foot = _limb(d, (cx + side * torso_w * 0.45, hip_y), angle, unit * 0.43, limb_w * 1.2, segs)
        d.ellipse([foot[0] - limb_w * 1.1, foot[1] - limb_w * 0.5, foot[0] + limb_w * 1.1, foot[1] + limb_w * 0.6], fill=shoes)
    if p.lower == "skirt":
        d.polygon([(cx - torso_w, hip_y - unit * 0.02), (cx + torso_w, hip_y - unit * 0.02),
                   (cx + torso_w * 1.5, hip_y + unit * 0.17), (cx - torso_w * 1.5, hip_y + unit * 0.17)], fill=b.lower)


def _draw_torso(d: ImageDraw.ImageDraw, b: _Body) -> None:
    """Torso, its pattern and garment details (coat tail, zip, collar, hem), bag straps."""
    p, cx, unit, torso_w, upper, shoulder_y, hip_y = b.p, b.cx, b.unit, b.torso_w, b.upper, b.shoulder_y, b.hip_y
    bottom = hip_y + (unit * 0.12 if p.upper == "coat" else 0.0)
    torso = (cx - torso_w, shoulder_y, cx + torso_w, bottom)
    d.rounded_rectangle(torso, radius=unit * 0.03, fill=upper)
    _pattern(d, torso, p.pattern, upper, unit)
    if p.upper == "jacket":
        d.line([(cx, shoulder_y), (cx, bottom)], fill=_shade(upper, 0.5), width=max(1, int(unit * 0.012)))
    elif p.upper == "shirt":
        d.polygon([(cx - unit * 0.04, shoulder_y), (cx, shoulder_y + unit * 0.05), (cx + unit * 0.04, shoulder_y)], fill=(245, 245, 245))
    elif p.upper == "sweater":
        d.rectangle([torso[0], bottom - unit * 0.03, torso[2], bottom], fill=_shade(upper, 0.7))
    if p.bag == "shoulder_bag":
        bag = COLOURS[p.bag_colour][0]
        d.line([(cx - torso_w, shoulder_y), (cx + torso_w, hip_y - unit * 0.04)], fill=_shade(bag, 0.8), width=max(1, int(unit * 0.015)))
        d.rectangle([cx + torso_w * 0.8, hip_y - unit * 0.08, cx + torso_w * 1.6, hip_y + unit * 0.02], fill=bag)
    elif p.bag == "backpack":
        strap = _shade(COLOURS[p.bag_colour][0], 0.8)
        for s in (-0.5, 0.5):
            d.line([(cx + s * torso_w, shoulder_y), (cx + s * torso_w, hip_y - unit * 0.1)], fill=strap, width=max(1, int(unit * 0.015)))


def _draw_arms(d: ImageDraw.ImageDraw, b: _Body, rng: np.random.Generator) -> None:
    """Arms: sleeve then skin; the right hand may hold a handbag, the left an object."""
    p, unit, limb_w = b.p, b.unit, b.limb_w
    sleeve = 0.45 if p.upper == "tshirt" else 0.95
    hands = []
    for side in (-1, 1):
        angle = side * rng.uniform(0.08, 0.6)
        hands.append(_limb(d, (b.cx + side * b.torso_w * 1.05, b.shoulder_y + limb_w * 0.4), angle, unit * 0.36, limb_w,
                           [(sleeve, b.upper), (1.0, b.skin)]))
    for hx, hy in hands:
        d.ellipse([hx - limb_w * 0.6, hy - limb_w * 0.6, hx + limb_w * 0.6, hy + limb_w * 0.6], fill=b.skin)
    hx, hy = hands[1]
    if p.bag == "handbag":
        bag = COLOURS[p.bag_colour][0]
        d.rectangle([hx - unit * 0.05, hy, hx + unit * 0.05, hy + unit * 0.08], fill=bag)
    hx, hy = hands[0]
    if p.obj == "umbrella":
        d.line([(hx, hy - unit * 0.02), (hx, hy + unit * 0.22)], fill=(30, 30, 30), width=max(1, int(unit * 0.02)))
        d.polygon([(hx - unit * 0.03, hy + unit * 0.04), (hx + unit * 0.03, hy + unit * 0.04), (hx, hy + unit * 0.24)], fill=(40, 40, 90))
    elif p.obj == "phone":
        d.rectangle([hx - unit * 0.015, hy - unit * 0.045, hx + unit * 0.015, hy], fill=(15, 15, 20))
    elif p.obj == "bottle":
        d.rectangle([hx - unit * 0.018, hy - unit * 0.06, hx + unit * 0.018, hy + unit * 0.02], fill=(120, 200, 230))
    elif p.obj == "book":
        d.rectangle([hx - unit * 0.04, hy - unit * 0.03, hx + unit * 0.04, hy + unit * 0.05], fill=(150, 40, 40))


def _draw_head(d: ImageDraw.ImageDraw, b: _Body) -> None:
    """Neck, head, hair and hat."""
    p, cx, head_r, head_c, hair, skin = b.p, b.cx, b.head_r, b.head_c, b.hair, b.skin
    d.rectangle([cx - head_r * 0.35, b.neck_y - head_r * 0.2, cx + head_r * 0.35, b.shoulder_y], fill=skin)
    d.ellipse([head_c[0] - head_r, head_c[1] - head_r, head_c[0] + head_r, head_c[1] + head_r], fill=skin)
    if p.hair_style == "curly":
        for k in range(7):
            a = math.pi * (0.9 + 1.2 * k / 6)
            px, py = head_c[0] + math.cos(a) * head_r * 0.85, head_c[1] + math.sin(a) * head_r * 0.85
            d.ellipse([px - head_r * 0.4, py - head_r * 0.4, px + head_r * 0.4, py + head_r * 0.4], fill=hair)
    else:
        d.chord([head_c[0] - head_r, head_c[1] - head_r, head_c[0] + head_r, head_c[1] + head_r * 0.5], 180, 360, fill=hair)
    if p.hair_style == "ponytail":
        d.ellipse([cx + head_r * 0.7, head_c[1] - head_r * 0.2, cx + head_r * 1.4, head_c[1] + head_r * 1.3], fill=hair)
    if p.hat == "none":
        return
    hat = COLOURS[p.hat_colour][0]
    hx0, hy0 = head_c[0] - head_r, head_c[1] - head_r
    if p.hat == "cap":
        d.chord([hx0, hy0 - head_r * 0.2, hx0 + 2 * head_r, hy0 + head_r * 1.2], 180, 360, fill=hat)
        d.rectangle([cx, hy0 + head_r * 0.35, cx + head_r * 1.6, hy0 + head_r * 0.55], fill=hat)
    elif p.hat == "beanie":
        d.rounded_rectangle([hx0 - head_r * 0.05, hy0 - head_r * 0.3, hx0 + 2.1 * head_r, hy0 + head_r * 0.7],
                            radius=head_r * 0.5, fill=hat)
    else:
        d.ellipse([cx - head_r * 1.9, hy0 + head_r * 0.2, cx + head_r * 1.9, hy0 + head_r * 0.7], fill=hat)
        d.chord([hx0 + head_r * 0.2, hy0 - head_r * 0.4, hx0 + 1.8 * head_r, hy0 + head_r * 1.0], 180, 360, fill=hat)


def _camera(img: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Per-image changes after the person is drawn: mirroring, an occluder, brightness, blur, downsampling."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        d = ImageDraw.Draw(img)
    if rng.random() < 0.3:
        # partial occlusion: a box (passer-by, pole, car) over one side or the bottom
        ow, oh = rng.uniform(0.3, 0.6) * w, rng.uniform(0.2, 0.45) * h
        ox = rng.choice([0.0, w - ow])
        oy = rng.uniform(0.3, 1.0) * (h - oh)
        d.rectangle([ox, oy, ox + ow, oy + oh], fill=_muted(rng, 30, 220))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.35))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    return img.resize(size, Image.Resampling.LANCZOS)


def render_person(p: Identity, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One view (``size`` = (width, height)) of person ``p``; ``rng`` decides the scene and pose."""
    w, h = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    img = _background((w, h), rng)
    d = ImageDraw.Draw(img)
    unit = h * rng.uniform(0.72, 0.95)
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w
    top = rng.uniform(0.02, 1.0) * (h - unit) if h > unit else 0.0
    body = _Body(p, unit, cx, top)
    _draw_back(d, body, rng)
    _draw_legs(d, body, rng)
    _draw_torso(d, body)
    _draw_arms(d, body, rng)
    _draw_head(d, body)
    return _camera(img, size, rng)


def render_to_file(job: tuple[int, int, int, Identity, tuple[int, int], str]) -> None:
    """Render image ``k`` of person ``pid`` (seeded by ``seed``, ``pid`` and ``k``) and save it as PNG at ``path``.

    A top-level function of this light module so that rendering processes import only it.
    """
    seed, pid, k, ident, size, path = job
    render_person(ident, size, np.random.default_rng([seed, 1, pid, k])).save(path, format="PNG")
