"""Images the model was never meant to read, made at test time: the out-of-scope set.

For tests and studies/scope_study.py (never shipped, never used to fit or choose the
image gate: that is fitted on training-split films only, edge/scope.py). Everything is
drawn here or read from what installed packages carry (matplotlib's sample data: a
photograph, an MR slice, terrain; Pillow's bundled font), and from the repository's own
figures and films, so the set is the same on every machine and needs no download.

kinds() maps a kind to a list of (name, encoded bytes): photographs, rendered pages and
scans, screenshots and charts, textures, other imaging (MR, terrain, microscopy-like
cells), the project's own figures, and chest films turned, upside down, inverted or
cropped (from films given by the caller: the external films in the study, the embedded
sample in tests).
"""
import gzip
import io
import os
from typing import Callable, Dict, Iterable, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Item = Tuple[str, bytes]

# What is done to a chest film to take it out of scope; each is a kind of its own.
FILM_TRANSFORMS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "turned 90 clockwise": lambda g: np.rot90(g, -1),
    "turned 90 anticlockwise": lambda g: np.rot90(g, 1),
    "upside down (flipped)": lambda g: g[::-1],
    "upside down (turned 180)": lambda g: np.rot90(g, 2),
    "inverted": lambda g: 255 - g,
}


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array)).save(out, format="PNG")
  return out.getvalue()


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
  out = io.BytesIO()
  image.save(out, format="JPEG", quality=quality)
  return out.getvalue()


def _sample_data(name: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  return os.path.join(matplotlib.get_data_path(), "sample_data", name)


def _crops(image: Image.Image, count: int, seed: int) -> List[Image.Image]:
  """`count` square-ish crops of at least half the image's side, seeded."""
  rng = np.random.default_rng(seed)
  w, h = image.size
  out = []
  for _ in range(count):
    side = int(min(w, h) * rng.uniform(0.5, 1.0))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out.append(image.crop((x, y, x + side, y + side)))
  return out


def photographs() -> List[Item]:
  """A portrait photograph and a product photograph, in colour and in grey, cropped."""
  items = []
  for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
    with Image.open(_sample_data(name)) as im:
      im = im.convert("RGB")
      for i, crop in enumerate(_crops(im, 6, seed=len(name))):
        items.append((f"{name} crop {i} colour", _jpeg(crop)))
        items.append((f"{name} crop {i} grey", _jpeg(crop.convert("L"))))
  return items


_TEXT = ("Patient information leaflet. Pneumonia is an infection of the lungs. Most "
         "children get better with rest and fluids; some need antibiotics. Please read "
         "all of this leaflet carefully before you start. Keep it, you may need to read "
         "it again. If you have any further questions, ask your doctor or pharmacist. ")


def _page(seed: int, scanned: bool) -> np.ndarray:
  rng = np.random.default_rng(seed)
  w, h = 850, 1100
  page = Image.new("L", (w, h), 250 if not scanned else int(rng.integers(215, 240)))
  draw = ImageDraw.Draw(page)
  font = ImageFont.load_default(size=int(rng.integers(16, 30)))
  words = (_TEXT * 8).split()
  y = 60
  if seed % 2:
    draw.text((60, y), "DISCHARGE SUMMARY", fill=0, font=ImageFont.load_default(size=44))
    y += 80
  line = ""
  for word in words:
    trial = f"{line} {word}".strip()
    if draw.textlength(trial, font=font) > w - 120:
      draw.text((60, y), line, fill=int(rng.integers(0, 60)), font=font)
      y += int(font.size * 1.5)
      line = word
      if y > h - 80:
        break
    else:
      line = trial
  if scanned:
    page = page.rotate(float(rng.uniform(-3, 3)), fillcolor=200, resample=Image.BILINEAR)
    page = page.filter(ImageFilter.GaussianBlur(0.8))
    noisy = np.asarray(page, np.float32) + rng.normal(0, 8, (h, w))
    return np.clip(noisy, 0, 255).astype(np.uint8)
  return np.asarray(page)


def pages() -> List[Item]:
  """Rendered pages of text, clean and as a scanner gives them (tilted, grey, noisy)."""
  return ([(f"page {i}", _png(_page(i, scanned=False))) for i in range(6)]
          + [(f"scanned page {i}", _jpeg(Image.fromarray(_page(i, scanned=True)), 75))
             for i in range(6)])


def screenshots() -> List[Item]:
  """Charts as matplotlib renders them, and a window of buttons and text."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  items = []
  rng = np.random.default_rng(3)
  for i in range(8):
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    x = np.linspace(0, 10, 200)
    if i % 4 == 0:
      ax.plot(x, np.sin(x * (i + 1) / 3) + rng.normal(0, 0.1, x.size))
    elif i % 4 == 1:
      ax.bar(range(8), rng.uniform(1, 10, 8))
    elif i % 4 == 2:
      ax.scatter(rng.normal(size=200), rng.normal(size=200), s=6)
    else:
      ax.imshow(rng.normal(size=(20, 20)), cmap="gray" if i > 4 else "viridis")
    ax.set_title(f"Figure {i}")
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    items.append((f"chart {i}", out.getvalue()))
  for i in range(4):
    window = Image.new("RGB" if i % 2 else "L", (1024, 700), (236, 236, 236) if i % 2 else 236)
    draw = ImageDraw.Draw(window)
    draw.rectangle((0, 0, 1024, 40), fill=(60, 60, 90) if i % 2 else 60)
    font = ImageFont.load_default(size=20)
    for row in range(12):
      draw.text((30, 70 + row * 48), f"Worklist row {row}: film {1000 + row + i} - read",
                fill=(20, 20, 20) if i % 2 else 20, font=font)
      draw.rectangle((800, 66 + row * 48, 980, 98 + row * 48), outline=0)
    items.append((f"window {i}", _png(np.asarray(window))))
  return items


def textures() -> List[Item]:
  """Noise, gravel-like filtered noise, checkerboards, stripes, gradients, blank."""
  rng = np.random.default_rng(7)
  items = []
  for i in range(3):
    items.append((f"noise {i}", _png(rng.integers(0, 256, (300, 300), dtype=np.uint8))))
    gravel = Image.fromarray(rng.integers(0, 256, (400, 400), dtype=np.uint8)).filter(
        ImageFilter.GaussianBlur(2 + 2 * i))
    a = np.asarray(gravel, np.float32)
    a = (a - a.min()) / (np.ptp(a) + 1e-6) * 255
    items.append((f"gravel {i}", _jpeg(Image.fromarray(a.astype(np.uint8)))))
    y, x = np.mgrid[0:256, 0:256]
    items.append((f"checkerboard {i}",
                  _png((((x // (8 << i)) + (y // (8 << i))) % 2 * 255).astype(np.uint8))))
    items.append((f"stripes {i}", _png((127 + 127 * np.sin(x / (3 + 4 * i))).astype(np.uint8))))
    items.append((f"gradient {i}", _png(((x + y * i) * 255 / (255 * (1 + i))).astype(np.uint8))))
    items.append((f"blank {i}", _png(np.full((200, 200), 60 * i, np.uint8))))
  return items


def other_imaging() -> List[Item]:
  """An MR slice (matplotlib's), a terrain map, and drawn cells like a microscope's."""
  raw = gzip.open(_sample_data("s1045.ima.gz")).read()
  mr = np.frombuffer(raw, "<u2").reshape(256, 256).astype(np.float32)
  items = []
  for i, gamma in enumerate((0.5, 1.0, 1.5)):
    a = (mr / mr.max()) ** gamma * 255
    items.append((f"MR slice {i}", _png(a.astype(np.uint8))))
  topo = np.load(_sample_data("topobathy.npz"))["topo"].astype(np.float32)
  topo = (topo - topo.min()) / np.ptp(topo) * 255
  items.append(("terrain", _png(np.asarray(Image.fromarray(topo.astype(np.uint8)).resize(
      (480, 364))))))
  rng = np.random.default_rng(11)
  for i in range(4):
    cells = Image.new("RGB", (512, 512), (235, 215, 230))
    draw = ImageDraw.Draw(cells)
    for _ in range(60):
      cx, cy, r = rng.integers(0, 512), rng.integers(0, 512), rng.integers(8, 30)
      draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(150, 60, 140), outline=(90, 20, 90))
    image = cells if i % 2 else cells.convert("L")
    items.append((f"cells {i}", _jpeg(image.filter(ImageFilter.GaussianBlur(1)))))
  return items


def own_figures() -> List[Item]:
  """The project's own pictures: the result card, Grad-CAM and occlusion figures."""
  items = []
  for name in sorted(os.listdir(os.path.join(ROOT, "docs"))):
    if name.endswith(".png"):
      with open(os.path.join(ROOT, "docs", name), "rb") as f:
        items.append((f"docs/{name}", f.read()))
  return items


def film_kinds(films: Iterable[Tuple[str, np.ndarray]]) -> Dict[str, List[Item]]:
  """Chest films (name, uint8 [H, W]) turned, upside down, inverted and cropped."""
  out: Dict[str, List[Item]] = {kind: [] for kind in FILM_TRANSFORMS}
  out["cropped to a quarter"] = []
  for name, gray in films:
    for kind, transform in FILM_TRANSFORMS.items():
      out[kind].append((name, _png(transform(gray))))
    h, w = gray.shape
    out["cropped to a quarter"].append((name, _png(gray[:h // 2, :w // 2])))
  return out


def kinds() -> Dict[str, List[Item]]:
  """Every kind of image that is not a chest film, by kind (films' kinds: film_kinds)."""
  return {"photograph": photographs(), "page or scan": pages(),
          "screenshot or chart": screenshots(), "texture": textures(),
          "other imaging": other_imaging(), "the project's own figures": own_figures()}
