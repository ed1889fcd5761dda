"""Which augmentations a run uses and how strong: names, ranges, the config object.

TensorFlow-free (cxr-train validates --augment before TensorFlow loads); the batched ops
that apply a config are in pipeline/augment.py.
"""
import dataclasses
from typing import Sequence, Tuple

AUGMENTATIONS = ("rotation", "zoom", "brightness", "contrast", "translation")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Which augmentations run and how strong; a zero/None range disables one.

  Defaults are the source article's: rotation ±20°, zoom ±30%, brightness 70-130%.
  """
  rotation_deg: float = 0.0  # uniform in [-r, r]
  zoom: float = 0.0  # per-axis scale uniform in [1 - z, 1 + z] (as ImageDataGenerator)
  brightness: Tuple[float, float] = (1.0, 1.0)  # multiplicative factor range
  contrast: float = 0.0  # factor uniform in [1 - c, 1 + c] around the image mean
  translation: float = 0.0  # shift uniform in [-t, t] x image size, per axis

  @property
  def geometric(self) -> bool:
    return bool(self.rotation_deg or self.zoom or self.translation)

  @property
  def enabled(self) -> bool:
    return self.geometric or self.brightness != (1.0, 1.0) or bool(self.contrast)

  def names(self) -> Tuple[str, ...]:
    on = {"rotation": self.rotation_deg, "zoom": self.zoom,
          "brightness": self.brightness != (1.0, 1.0), "contrast": self.contrast,
          "translation": self.translation}
    return tuple(n for n in AUGMENTATIONS if on[n])


def config_from_names(names: Sequence[str], rotation_deg: float = 20.0, zoom: float = 0.3,
                      brightness: Tuple[float, float] = (0.7, 1.3), contrast: float = 0.2,
                      translation: float = 0.1) -> AugmentConfig:
  """Builds a config enabling `names` (a subset of AUGMENTATIONS, or ["none"]).

  Raises:
    ValueError: an unknown name, or "none" combined with others.
  """
  names = [n.strip().lower() for n in names if n.strip()]
  if names == ["none"] or not names:
    return AugmentConfig()
  unknown = sorted(set(names) - set(AUGMENTATIONS))
  if unknown:
    raise ValueError(f"unknown augmentation(s) {unknown}; choose from {AUGMENTATIONS} or none")
  return AugmentConfig(
      rotation_deg=rotation_deg if "rotation" in names else 0.0,
      zoom=zoom if "zoom" in names else 0.0,
      brightness=tuple(brightness) if "brightness" in names else (1.0, 1.0),
      contrast=contrast if "contrast" in names else 0.0,
      translation=translation if "translation" in names else 0.0)
