"""On-device normalisation and augmentation, run inside the jitted step.

Randomness is per example: the key of example ``i`` of the global batch is
``fold_in(step_key, i)``, so augmentations do not depend on how the batch is
split over devices or processes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NORMALIZATIONS = ("reference", "mean_std")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """``reference`` normalisation is the notebook's ``(x/255 - 0.5) / 0.5``."""
  normalization: str = "reference"
  crop_padding: int = 0      # random crop after reflect-padding by this many pixels; 0 = off
  flip: bool = False         # random horizontal flip
  cutout: int = 0            # side of a random square set to 0 after normalising; 0 = off

  @property
  def is_random(self) -> bool:
    return bool(self.crop_padding or self.flip or self.cutout)


def normalize(images: jax.Array, normalization: str) -> jax.Array:
  """uint8 ``[B, H, W, 3]`` -> float32, normalised."""
  x = images.astype(jnp.float32) / 255.0
  if normalization == "reference":
    return (x - 0.5) / 0.5
  if normalization == "mean_std":
    return (x - jnp.array(CIFAR10_MEAN)) / jnp.array(CIFAR10_STD)
  raise ValueError(f"normalization {normalization!r} is unknown: use one of {NORMALIZATIONS}")


def _augment_one(image: jax.Array, key: jax.Array, config: AugmentConfig) -> jax.Array:
  crop_key, flip_key, cut_key = jax.random.split(key, 3)
  height, width, _ = image.shape
  if config.crop_padding:
    pad = config.crop_padding
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
  if config.flip:
    image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
  if config.cutout:
    cy, cx = jax.random.randint(cut_key, (2,), 0, jnp.array([height, width]))
    rows = jnp.abs(jnp.arange(height) - cy)[:, None] <= config.cutout // 2
    cols = jnp.abs(jnp.arange(width) - cx)[None, :] <= config.cutout // 2
    image = jnp.where((rows & cols)[..., None], 0.0, image)
  return image


def preprocess(images: jax.Array, config: AugmentConfig, key: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
  """Normalises, then (when ``key`` is given and the config asks) augments each example."""
  x = normalize(images, config.normalization)
  if key is None or not config.is_random:
    return x
  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)
  return jax.vmap(lambda im, k: _augment_one(im, k, config))(x, keys)
