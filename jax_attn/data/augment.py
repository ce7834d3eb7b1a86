"""On-device normalisation, augmentation and test-time views, run inside the compiled steps.

Randomness is per example: the key of example ``i`` of the global batch is
``fold_in(step_key, i)``, so augmentations do not depend on how the batch is
split over devices or processes. The alternating flip depends on the example's
index in the training split and the epoch only.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def normalize(images: jax.Array, normalization: str) -> jax.Array:
  """uint8 ``[B, H, W, 3]`` -> float32: ``reference`` ((x/255 - 0.5) / 0.5, the notebook's) or
  ``mean_std`` (CIFAR-10's channel statistics)."""
  x = images.astype(jnp.float32) / 255.0
  if normalization == "mean_std":
    return (x - jnp.array(CIFAR10_MEAN)) / jnp.array(CIFAR10_STD)
  return (x - 0.5) / 0.5


def alternating_flips(key: jax.Array, indices: jax.Array, epoch: jax.Array) -> jax.Array:
  """Whether each example is mirrored in ``epoch``: a fair coin per example, drawn once from
  ``key`` and its index in the training split, inverted in every odd epoch, so each example
  is mirrored in exactly one of any two consecutive epochs (airbench's alternating flip: the
  two views are seen equally often, where independent random flips repeat one by chance)."""
  base = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(indices)
  return base ^ (epoch % 2 == 1)


def _augment_one(image: jax.Array, key: jax.Array, config: Any,
                 flip: jax.Array | None) -> jax.Array:
  crop_key, flip_key = jax.random.split(key)
  if config.crop_padding:
    pad = config.crop_padding
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
  if config.flip:
    flip = jax.random.bernoulli(flip_key) if flip is None else flip
    image = jnp.where(flip, image[:, ::-1], image)
  return image


def preprocess(images: jax.Array, config: Any, key: jax.Array | None = None,
               positions: jax.Array | None = None, flips: jax.Array | None = None) -> jax.Array:
  """Normalises, then (when ``key`` is given and ``config``, the ``augment`` settings, asks)
  crops and flips each example. ``flips`` (one bool per example, e.g. ``alternating_flips``)
  replaces the random flip."""
  x = normalize(images, config.normalization)
  if key is None or not (config.crop_padding or config.flip):
    return x
  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)
  if flips is None:
    return jax.vmap(lambda im, k: _augment_one(im, k, config, None))(x, keys)
  return jax.vmap(lambda im, k, f: _augment_one(im, k, config, f))(x, keys, flips)


def translate(images: jax.Array, dy: int, dx: int) -> jax.Array:
  """``[B, H, W, C]`` moved by (dy, dx) pixels, the border filled by reflection (as the crops)."""
  pad = max(abs(dy), abs(dx))
  if pad == 0:
    return images
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  height, width = images.shape[1:3]
  return padded[:, pad - dy:pad - dy + height, pad - dx:pad - dx + width]


def tta_views(flip: bool, shift: int) -> list[tuple[float, int, bool]]:
  """Test-time views as ``(weight, shift, mirrored)``; the weights sum to one.

  ``shift`` > 0 adds the image moved by ``(+shift, +shift)`` and ``(-shift, -shift)`` pixels:
  the unshifted view weighs 1/2, each shifted one 1/4 (airbench's TTA); ``flip`` adds the
  mirror image of every view at the same weight, halving each.
  """
  shifts = [(1.0, 0)] + ([(0.5, shift), (0.5, -shift)] if shift else [])
  shifts = [(w / sum(w for w, _ in shifts), s) for w, s in shifts]
  mirrors = [False, True] if flip else [False]
  return [(w / len(mirrors), s, m) for w, s in shifts for m in mirrors]


def tta_logits(apply: Callable[[jax.Array], jax.Array], images: jax.Array, *,
                     flip: bool, shift: int) -> tuple[jax.Array, jax.Array]:
  """``(logits, plain)``: the weighted mean of ``apply`` over the test-time views of
  normalised ``images`` (``tta_views``), and its logits of the plain images alone."""
  views = tta_views(flip, shift)
  plain = apply(images)
  if len(views) == 1:
    return plain, plain
  logits = views[0][0] * plain
  for weight, moved, mirrored in views[1:]:
    view = translate(images, moved, moved)
    logits += weight * apply(view[:, :, ::-1] if mirrored else view)
  return logits, plain
