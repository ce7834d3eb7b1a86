"""Attention maps: what a trained model's attention layers look at, drawn over the image.

``panels`` turns one image's attention weights into heat maps: for the SA-CNN, the weights of
a centre and a corner query pixel in each SAGAN layer; for the ViT, the class token's attention
in the last block (per head and their mean) and the attention rollout through all blocks
(Abnar & Zuidema, 2020). ``draw`` lays them out beside the image as a PNG with Pillow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

Panel = tuple[np.ndarray, str, "tuple[int, int] | None"]  # heat map, title, query pixel
# matplotlib's "inferno" colour map at 8 evenly spaced stops, interpolated linearly.
_INFERNO = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                     (245, 125, 21), (250, 193, 39), (252, 255, 164)], np.float64)
_ZOOM = 3  # each image pixel drawn as 3 x 3


def panels(model_name: str, layers: list[np.ndarray]) -> list[Panel]:
  """The heat maps of one image, from its weights ``[heads, queries, keys]`` per layer."""
  result = []
  if model_name == "sa_cnn":
    for layer, weights in enumerate(layers):
      side = int(round(np.sqrt(weights.shape[-1])))
      for label, (y, x) in (("centre", (side // 2, side // 2)), ("corner", (side // 4, side // 4))):
        heat = weights.mean(0)[y * side + x].reshape(side, side)
        result.append((heat, f"SA{layer + 1} {label}", (y, x)))
    return result
  last, tokens = layers[-1], layers[-1].shape[-1]  # the class token is key 0
  side = int(round(np.sqrt(tokens - 1)))
  for head in range(last.shape[0]):
    result.append((last[head, 0, 1:].reshape(side, side), f"head {head}", None))
  result.append((last.mean(0)[0, 1:].reshape(side, side), "heads' mean", None))
  rollout = np.eye(tokens)
  for weights in layers:  # a class-pooled ViT's last block has the class token's row only
    rows = weights.shape[-2]
    mixed = 0.5 * weights.mean(0) + 0.5 * np.eye(tokens)[:rows]
    rollout = mixed / mixed.sum(-1, keepdims=True) @ rollout
  result.append((rollout[0, 1:].reshape(side, side), "rollout", None))
  return result


def _colour(heat: np.ndarray) -> np.ndarray:
  """Values in [0, 1] -> RGB through the inferno stops."""
  position = np.clip(heat, 0, 1) * (len(_INFERNO) - 1)
  low = np.minimum(position.astype(int), len(_INFERNO) - 2)
  frac = (position - low)[..., None]
  return (1 - frac) * _INFERNO[low] + frac * _INFERNO[low + 1]


def _tile(image: np.ndarray, title: str, heat: np.ndarray | None = None,
          query: tuple[int, int] | None = None) -> Image.Image:
  """One panel: the image, with ``heat`` (scaled to its maximum) over it, and its title."""
  rgb = image.astype(np.float64)
  if heat is not None:
    zoom = image.shape[0] // heat.shape[0]
    cells = np.kron(heat / max(float(heat.max()), 1e-12), np.ones((zoom, zoom)))
    cells = np.pad(cells, [(0, image.shape[0] - cells.shape[0]), (0, image.shape[1] - cells.shape[1])])
    rgb = 0.45 * rgb + 0.55 * _colour(cells)
  size = image.shape[0] * _ZOOM
  picture = Image.fromarray(rgb.astype(np.uint8)).resize((size, size), Image.NEAREST)
  tile = Image.new("RGB", (size, size + 14), "white")
  tile.paste(picture, (0, 14))
  draw = ImageDraw.Draw(tile)
  draw.text((2, 1), title[:size // 6], fill="black")
  if query is not None:  # a cyan cross on the query pixel
    zoom = image.shape[0] // heat.shape[0] * _ZOOM
    y, x = (query[0] + 0.5) * zoom + 14, (query[1] + 0.5) * zoom
    draw.line([(x - 4, y), (x + 4, y)], fill="cyan")
    draw.line([(x, y - 4), (x, y + 4)], fill="cyan")
  return tile


def draw(model_name: str, image: np.ndarray, layers: list[np.ndarray], path: Path | str,
         title: str = "image") -> None:
  """One PNG: ``image`` (uint8, as the model saw it) and its attention panels side by side."""
  tiles = [_tile(image, title)] + [_tile(image, t, heat, query)
                                   for heat, t, query in panels(model_name, layers)]
  sheet = Image.new("RGB", (sum(t.width + 4 for t in tiles), tiles[0].height), "white")
  for i, tile in enumerate(tiles):
    sheet.paste(tile, (i * (tile.width + 4), 0))
  sheet.save(path)
