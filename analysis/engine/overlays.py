"""Label overlays for browsing a dataset: each label id in its own colour over the image."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image


def label_colour(label_id: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per label id (golden-ratio hue steps; fixed saturation)."""
    hue = (label_id * 0.6180339887) % 1.0
    lightness = 0.45 + 0.15 * ((label_id * 7) % 3) / 2
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return int(r * 255), int(g * 255), int(b * 255)


def render_label_overlay(
    image: np.ndarray, layers: np.ndarray, *, alpha: float = 0.55, whole_image_labels: tuple[int, ...] = ()
) -> Image.Image:
    """Blend ``layers`` (``int[L, sh, sw]`` label ids, 0 = none; the first layer wins where several are
    labelled) over ``image`` (``uint8[H, W, 3]``), upsampling labels by nearest neighbour to ``H × W``.

    A whole-image label (no pixel layers) tints every pixel in its colour.
    """
    height, width = image.shape[:2]
    labels = np.zeros((height, width), dtype=np.int64)
    if layers.size:
        rows = np.arange(height) * layers.shape[1] // height
        cols = np.arange(width) * layers.shape[2] // width
        resized = layers[:, rows][:, :, cols]
        for layer in resized[::-1]:  # paint the dominant (first) layer last
            labels = np.where(layer != 0, layer, labels)
    elif whole_image_labels:
        labels[:] = whole_image_labels[0]
    ids = np.unique(labels[labels != 0])
    palette = np.zeros((int(ids.max()) + 1 if ids.size else 1, 3), dtype=np.float32)
    for label_id in ids:
        palette[label_id] = label_colour(int(label_id))
    mask = (labels != 0)[..., None]
    blended = np.where(mask, (1 - alpha) * image + alpha * palette[labels], image.astype(np.float32))
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
