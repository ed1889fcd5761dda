"""Which augmentations a run uses and how strong: names, ranges, the config object.

TensorFlow-free (cxr-train validates --augment before TensorFlow loads); the batched ops
that apply a config are in pipeline/augment.py. `AugmentOptions` are cxr-train's
augmentation flags (core/config_flags.py); `AugmentOptions.config()` the config they give.
"""
import dataclasses
from typing import Sequence, Tuple

from cxr_edge.core.config_flags import RECIPE, option

AUGMENTATIONS = ("rotation", "zoom", "brightness", "contrast", "translation")

# Chosen on the external films, not on validation (docs/results.md): geometric
# augmentation is what carries the model to films from another source, and intensity
# augmentation on top of it ranked them better. cxr-train's default.
DEFAULT_AUGMENT = ("rotation", "zoom", "brightness", "contrast")


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


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """cxr-train's augmentation flags: which augmentations, and each one's range when on.

  The ranges' defaults are the source article's (rotation, zoom, brightness) and ours.
  """
  augment: Tuple[str, ...] = option(
      DEFAULT_AUGMENT, qat=RECIPE,
      help=f"Augmentations ({', '.join(AUGMENTATIONS)}) or 'none'; applied batched in the "
      "training step (on the GPU when there is one). The default was chosen on external "
      "films (README).")
  rotation_deg: float = option(20.0, lower_bound=0.0, qat=RECIPE,
                               help="Rotation range, ± degrees.")
  zoom: float = option(0.3, lower_bound=0.0, upper_bound=0.9, qat=RECIPE,
                       help="Zoom range, ± fraction per axis.")
  brightness: Tuple[float, float] = option((0.7, 1.3), qat=RECIPE,
                                           help="Brightness factor range.")
  contrast: float = option(0.2, lower_bound=0.0, qat=RECIPE, help="Contrast range, ± fraction.")
  translation: float = option(0.1, lower_bound=0.0, qat=RECIPE,
                              help="Shift range, ± fraction of the size.")

  def config(self) -> "AugmentConfig":
    low, high = (float(v) for v in self.brightness)
    return config_from_names(self.augment, self.rotation_deg, self.zoom, (low, high),
                             self.contrast, self.translation)


_RANGES = AugmentOptions()


def config_from_names(names: Sequence[str], rotation_deg: float = _RANGES.rotation_deg,
                      zoom: float = _RANGES.zoom,
                      brightness: Tuple[float, float] = _RANGES.brightness,
                      contrast: float = _RANGES.contrast,
                      translation: float = _RANGES.translation) -> AugmentConfig:
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
