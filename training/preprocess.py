"""Image preprocessing as config: how a (non-square) image becomes the tower's square input.

- `crop`: resize the short side to the tower's size, then center-crop the long side (its borders are lost).
  What CLIP's own processor does; the LLaVA paper.
- `resize`: resize both sides to the tower's size (the whole image, aspect ratio not kept). SigLIP's own.
- `pad`: pad to a square with the processor's mean color (image centered), then resize. LLaVA-1.5
  (`image_aspect_ratio: pad`).

Whatever the mode, the result is a transformers `LlavaImageProcessor` built from the tower's own processor
(mean, std, resampling, rescale) with stock options only (`do_pad`, `do_center_crop`, `size`, `crop_size`), so
`AutoProcessor.from_pretrained` on a checkpoint reproduces the training pixels, and so do servers that run
the HF processor. `do_pad` is the LLaVA-1.5 pad-to-square (fill = int(255 * mean) per channel, as LLaVA's
`expand2square`), not the generic pad-to-size of other processors.
"""

from __future__ import annotations

from transformers import LlavaImageProcessor
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

PREPROCESSING = ("resize", "pad", "crop")  # the values of TrainConfig.image_preprocessing
# What carries over from the tower's processor: the normalisation it was trained with and its resampling.
_KEPT = ("image_mean", "image_std", "resample", "rescale_factor", "do_rescale", "do_normalize", "do_convert_rgb")


def geometry(mode: str, image_size: int) -> dict:
    """The stock `LlavaImageProcessor` options that implement `mode` for a square `image_size` input."""
    square = {"height": image_size, "width": image_size}
    if mode == "crop":
        return {
            "do_pad": False,
            "do_resize": True,
            "size": {"shortest_edge": image_size},
            "do_center_crop": True,
            "crop_size": square,
        }
    if mode == "resize":
        return {"do_pad": False, "do_resize": True, "size": square, "do_center_crop": False, "crop_size": square}
    if mode == "pad":
        return {"do_pad": True, "do_resize": True, "size": square, "do_center_crop": False, "crop_size": square}
    raise ValueError(f"image_preprocessing {mode!r} is not one of {PREPROCESSING}")


def image_processor_for(base: BaseImageProcessor, mode: str, image_size: int) -> BaseImageProcessor:
    """A `LlavaImageProcessor` doing `mode` with `base`'s normalisation and resampling.

    The backend follows `base` (PIL or torchvision, whichever transformers picked in this environment), so
    training resizes with the same library that `AutoImageProcessor` would use here for the tower.
    """
    kept = {name: getattr(base, name) for name in _KEPT if getattr(base, name, None) is not None}
    cls = LlavaImageProcessorPil if type(base).__name__.endswith("Pil") else LlavaImageProcessor
    return cls(**kept, **geometry(mode, image_size))


def preprocessing_of(image_processor: BaseImageProcessor) -> str:
    """The mode a saved image processor performs (read back from its options)."""
    if type(image_processor).__name__.startswith("LlavaImageProcessor") and getattr(image_processor, "do_pad", False):
        return "pad"
    return "crop" if getattr(image_processor, "do_center_crop", False) else "resize"
