"""jax_attn: attention-based CIFAR-10 classifiers (SA-CNN and ViT) in JAX/Flax.

Modules: ``sa_cnn`` and ``vit`` (the models), ``attention`` (the einsum core),
``layers`` (the CPU-speed layers the models use by name),
``train`` (the per-device step), ``parallel`` (single device / pmap / shard_map),
``trainer`` (the loop), ``main`` (the command line), ``report`` (the comparison report).
"""
from importlib import metadata

try:
  __version__ = metadata.version("jax_attn")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
  __version__ = "0+unknown"
