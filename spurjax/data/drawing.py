"""What the built-in generators (`spurjax.data.synth`, `spurjax.data.broad`) draw with.

Colours, value noise and polygon shapes; the land and water scenes both generators use; the
drawing of an object (a list of parts) onto a scene; and the random stream of each image.

An object is a list of parts `(polygon, RGB fill, outlined)`: the polygon in object units
(y grows downwards), drawn in order, every part inside the object's mask.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

# The streams of generated images: every image is drawn from (seed, stream, index) alone, so
# results do not depend on worker count and no two generated sets share an image.
BENCH_STREAM = 0   # synth: the benchmark
CORPUS_STREAM = 1  # synth: the captioned corpus
BROAD_STREAM = 2   # broad: the pretraining corpus


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
  """The random stream of image `index` of `stream` under `seed`."""
  return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


# ----------------------------------------------------------------------------- colours and noise


def hsv_image(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> Image.Image:
  """An RGB image from HSV planes in [0, 1] (hue wraps around)."""
  planes = [np.mod(h, 1.0), np.clip(s, 0, 1), np.clip(v, 0, 1)]
  chans = [Image.fromarray((p * 255 + 0.5).astype(np.uint8)) for p in planes]
  return Image.merge("HSV", chans).convert("RGB")


def rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
  """An RGB triple in 0..255 from HSV in [0, 1] (hue wraps around, saturation and value are clipped)."""
  r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
  return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
  """Value noise in [-1, 1] with about `cells` blobs across, bicubically upsampled to n x n."""
  grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
  img = Image.fromarray(grid).resize((n, n), Image.BICUBIC)
  return np.asarray(img)


# ----------------------------------------------------------------------------- polygons


def ellipse(cx: float, cy: float, a: float, b: float, angle: float = 0.0, k: int = 28) -> np.ndarray:
  """A (k, 2) polygon: the ellipse of half-axes `a`, `b` centred at (cx, cy), turned by `angle`."""
  t = np.linspace(0, 2 * np.pi, k, endpoint=False)
  x, y = a * np.cos(t), b * np.sin(t)
  c, s = np.cos(angle), np.sin(angle)
  return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def poly(*points) -> np.ndarray:
  """A polygon from its (x, y) corners."""
  return np.asarray(points, np.float64)


def rect(x0, y0, x1, y1) -> np.ndarray:
  """The axis-aligned rectangle from (x0, y0) to (x1, y1) as a polygon."""
  return poly((x0, y0), (x1, y0), (x1, y1), (x0, y1))


# ----------------------------------------------------------------------------- scenes


def land(rng: np.random.Generator, n: int) -> Image.Image:
  """An n x n land scene: green/brown mottled ground with patches, grass blades and stones."""
  hue = rng.uniform(0.06, 0.30)
  sat = rng.uniform(0.35, 0.70)
  val = rng.uniform(0.30, 0.55)
  coarse, fine = smooth_noise(rng, n, 4), smooth_noise(rng, n, 16)
  grain = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
  h = hue + 0.03 * coarse
  s = np.clip(sat + 0.10 * fine, 0, 1)
  v = np.clip(val + 0.12 * coarse + 0.07 * fine + 0.04 * grain, 0, 1)
  img = hsv_image(h, s, v)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(3, 8))):  # patches of soil / moss
    cx, cy = rng.uniform(0, n, 2)
    rx, ry = rng.uniform(0.05, 0.18, 2) * n
    colour = rgb(hue + rng.uniform(-0.06, 0.06), sat + rng.uniform(-0.2, 0.2),
                 val + rng.uniform(-0.18, 0.15))
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
  width = max(1, n // 64)
  for _ in range(int(rng.integers(15, 40))):  # grass blades / twigs
    x, y = rng.uniform(0, n), rng.uniform(0, n)
    length = rng.uniform(0.02, 0.06) * n
    lean = rng.uniform(-0.5, 0.5) * length
    colour = rgb(hue + rng.uniform(-0.05, 0.05), sat, val + rng.uniform(-0.2, 0.2))
    draw.line([(x, y), (x + lean, y - length)], fill=colour, width=width)
  clutter(draw, rng, n, stones=True)
  return img


def water(rng: np.random.Generator, n: int) -> Image.Image:
  """An n x n water scene: blue horizontal waves with glints and floating leaves."""
  hue = rng.uniform(0.53, 0.64)
  sat = rng.uniform(0.45, 0.80)
  val = rng.uniform(0.40, 0.70)
  yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
  freq = rng.uniform(4.0, 10.0)
  wobble = rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform()))
  waves = np.sin(2 * np.pi * (freq * (yy + wobble) + rng.uniform()))
  ripples = np.sin(2 * np.pi * (2.3 * freq * yy + rng.uniform()))
  depth = rng.uniform(-0.12, 0.12) * (yy - 0.5)
  noise = smooth_noise(rng, n, 6)
  h = hue + 0.015 * noise
  s = np.clip(sat - 0.08 * waves, 0, 1)
  v = np.clip(val + 0.10 * waves + 0.04 * ripples + depth + 0.04 * noise, 0, 1)
  img = hsv_image(h, s, v)
  draw = ImageDraw.Draw(img)
  width = max(1, n // 64)
  for _ in range(int(rng.integers(6, 16))):  # glints on the wave crests
    x, y = rng.uniform(0, n), rng.uniform(0, n)
    length = rng.uniform(0.03, 0.10) * n
    colour = rgb(hue, sat * 0.35, min(1.0, val + rng.uniform(0.2, 0.4)))
    draw.line([(x, y), (x + length, y)], fill=colour, width=width)
  clutter(draw, rng, n, stones=False)
  return img


def clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, n: int, stones: bool) -> None:
  """Outlined distractors in object-like colours: stones on land, floating leaves on water.

  They keep object colour and outlines from giving the object away, so finding it
  takes its shape.
  """
  width = max(1, n // 64)
  for _ in range(int(rng.integers(2, 6))):
    hue = rng.uniform()
    fill = rgb(hue, rng.uniform(0.3, 0.9), rng.uniform(0.5, 1.0))
    c = rng.uniform(0.05, 0.95, 2) * n
    r = rng.uniform(0.03, 0.08) * n
    if stones:  # an irregular polygon
      k = int(rng.integers(5, 9))
      t = np.sort(rng.uniform(0, 2 * np.pi, k))
      rad = r * rng.uniform(0.6, 1.0, k)
      pts = np.stack([c[0] + rad * np.cos(t), c[1] + rad * np.sin(t)], axis=1)
    else:  # a leaf: a flat ellipse, a little tilted
      pts = ellipse(c[0], c[1], r * rng.uniform(1.0, 1.8), r * rng.uniform(0.35, 0.7), rng.uniform(-0.5, 0.5))
    draw.polygon([tuple(p) for p in pts], fill=fill, outline=rgb(hue, 0.6, 0.12), width=width)


# ----------------------------------------------------------------------------- objects


def draw_object(canvas: Image.Image, parts, hue: float, size: float, angle: float, flip: float, centre,
                image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws an object's polygons (unit coordinates, scaled by `size`, turned by `angle`, mirrored when
  `flip` is -1, centred at `centre`) on the 2x canvas; returns the box-downsampled (image, bool mask)."""
  n = canvas.size[0]
  rot = np.asarray([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  outline = rgb(hue, 0.6, 0.12)
  width = max(1, n // 64)
  mask = Image.new("L", (n, n), 0)
  draw, mdraw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
  for polygon, fill, outlined in parts:
    pts = (polygon * np.asarray([flip, 1.0])) @ rot.T * size + centre
    xy = [tuple(p) for p in pts]
    draw.polygon(xy, fill=fill, outline=outline if outlined else None, width=width)
    mdraw.polygon(xy, fill=255, outline=255 if outlined else None, width=width)
  image = np.asarray(canvas.resize((image_size, image_size), Image.BOX))
  mask_arr = np.asarray(mask.resize((image_size, image_size), Image.BOX)) >= 128
  return image, mask_arr
