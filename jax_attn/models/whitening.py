"""A frozen patch-whitening first layer, its filters computed from the training images.

The layer is a ``p x p`` convolution (no padding) whose ``2 p^2 C`` filters are the
eigenvectors ``v_i`` of the (uncentred) covariance of the training images' ``p x p``
patches, each scaled by ``1 / sqrt(lambda_i + eps)`` and used with both signs: its output
over training patches has (close to) identity covariance in each half, so the first trainable
layer sees decorrelated, unit-variance inputs (as in KellerJordan/cifar10-airbench). The
filters never train (``optim.param_groups``: ``whiten_kernel``); the bias trains briefly.
No library computes these filters, hence this module.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

EPSILON = 5e-4


def patches(images: np.ndarray, patch_size: int) -> np.ndarray:
  """All stride-1 ``p x p`` patches of ``[N, H, W, C]`` images, flattened in (dy, dx, c) order
  (the layout of a Flax ``[p, p, C, out]`` kernel): ``[N * (H-p+1) * (W-p+1), p * p * C]``."""
  n, height, width, channels = images.shape
  p = patch_size
  views = [images[:, dy:height - p + 1 + dy, dx:width - p + 1 + dx] for dy in range(p)
           for dx in range(p)]
  return np.stack(views, axis=3).reshape(-1, p * p * channels)


def whitening_kernel(images: np.ndarray, patch_size: int = 2, eps: float = EPSILON) -> np.ndarray:
  """The ``[p, p, C, 2 p^2 C]`` filters for normalised float ``images`` ``[N, H, W, C]``."""
  x = patches(np.asarray(images, np.float64), patch_size)
  covariance = x.T @ x / len(x)
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  order = np.argsort(eigenvalues)[::-1]  # largest first
  filters = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)  # [p*p*C, p*p*C]
  filters = np.concatenate([filters, -filters], axis=1)
  channels = images.shape[-1]
  return filters.reshape(patch_size, patch_size, channels, -1).astype(np.float32)


class PatchWhitening(nn.Module):
  """``p x p`` valid convolution to ``2 p^2 C`` channels (filters set by ``whitening_kernel``;
  zeros until then), plus a bias."""
  patch_size: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    features = 2 * self.patch_size ** 2 * channels
    return nn.Conv(features, (self.patch_size, self.patch_size), padding="VALID", dtype=self.dtype,
                   kernel_init=nn.initializers.zeros, name="whiten")(x)


def has_whitening(params: dict) -> bool:
  """Whether ``params`` hold a ``whiten`` layer (at any depth)."""
  return any("whiten" in (getattr(k, "key", None) for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def set_whitening(params: dict, images: np.ndarray, patch_size: int = 2) -> dict:
  """``params`` with every ``whiten`` layer's kernel computed from ``images`` (normalised)."""
  def visit(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: visit(v) for k, v in tree.items()}
    if "whiten" in out and isinstance(out["whiten"], dict) and "kernel" in out["whiten"]:
      kernel = whitening_kernel(images, patch_size)
      out["whiten"] = {**out["whiten"], "kernel": jnp.asarray(kernel, out["whiten"]["kernel"].dtype)}
    return out
  return visit(params)
