"""SA-CNN recipes: ``get_config(name)`` for a name in ``RECIPES`` (seed, tuned = tuned_v2, ...).

    python -m jax_attn.main --config=jax_attn/configs/sa_cnn.py:tuned --config.batch_size=256

Copy this file to write a recipe of your own; every setting is listed in ``default.py``.
"""
from __future__ import annotations

import ml_collections

from jax_attn.configs import default


def seed() -> ml_collections.ConfigDict:
  """The reference notebook: Adam 1e-3, batch 64, 10 epochs, no augmentation."""
  return default.for_model("sa_cnn", "seed")


def tuned_v1() -> ml_collections.ConfigDict:
  """BN SA-CNN (3 stages, attention at 16x16 and 8x8), AdamW + warm-up cosine, crop + flip,
  label smoothing 0.1, flip TTA. Batch 128 / 4e-3 from the H100 grid (experiments/README.md):
  86.72 % against 85.12 / 85.42 % for batch 256 / 4e-3."""
  config = default.for_model("sa_cnn", "tuned")
  config.batch_size, config.learning_rate = 128, 4e-3
  config.optimizer, config.weight_decay, config.grad_clip_norm = "adamw", 5e-2, 1.0
  config.schedule, config.warmup_epochs = "warmup_cosine", 1.0
  config.label_smoothing, config.eval_flip = 0.1, True
  config.augment.normalization, config.augment.crop_padding, config.augment.flip = "mean_std", 4, True
  return config


def tuned_v2() -> ml_collections.ConfigDict:
  """airbench's training on the whitened, early-pooled SA-CNN (preset tuned_v2, 541,674
  parameters): SGD-Nesterov (momentum 0.85) at batch 1,000 (45 steps an epoch: every example
  each epoch), peak rate 1.5 on the mean loss with coupled L2 1.33e-3, batch-norm biases at 64x
  the rate; 2.3 warm-up epochs from 0.2x, then linear to 0.07x; label smoothing 0.2; lookahead
  every 5 steps; translate +-2 px and alternating flip; 6-view TTA (flip x {0, +-1 px})."""
  config = default.for_model("sa_cnn", "tuned_v2")
  config.batch_size, config.learning_rate, config.optimizer = 1000, 1.5, "sgd"
  config.momentum, config.weight_decay, config.bias_lr_scale = 0.85, 0.0153 / 11.5, 64.0
  config.schedule, config.warmup_epochs = "warmup_linear", 2.3
  config.lr_warmup_start, config.lr_final, config.whiten_bias_epochs = 0.2, 0.07, 3.0
  config.label_smoothing = 0.2
  config.lookahead_every_steps, config.lookahead_decay = 5, 0.95
  config.augment.normalization, config.augment.crop_padding = "mean_std", 2
  config.augment.flip, config.augment.alternating_flip = True, True
  config.eval_flip, config.eval_translate = True, 1
  return config


def without_attention(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The attention ablation of a tuned_v2-shaped recipe: no SAGAN layers, the last stage
  widened 112 -> 120 so the parameter count matches (541,848 against 541,674)."""
  config.model.attention_stages, config.model.widths = (), (64, 128, 120)
  return config


def tuned_v2_noattn() -> ml_collections.ConfigDict:
  """tuned_v2 without its two SAGAN layers (``without_attention``)."""
  return without_attention(tuned_v2())


def tuned_v2_muon() -> ml_collections.ConfigDict:
  """A candidate: tuned_v2 with its 3x3 convolution filters trained by Muon (rate 0.24 at the
  schedule's peak, momentum 0.6, each kernel kept at Frobenius norm sqrt(out); airbench94_muon's
  values) and everything else as tuned_v2."""
  config = tuned_v2()
  config.optimizer, config.muon_learning_rate, config.muon_momentum = "muon", 0.24, 0.6
  return config


def tuned_v3() -> ml_collections.ConfigDict:
  """A candidate: tuned_v2_muon with airbench's order in each stage's first conv, conv -> pool
  -> batch norm -> GELU (``pool_before_norm``; tuned_v2 pools after the GELU). Same parameters."""
  config = tuned_v2_muon()
  config.model.pool_before_norm = True
  return config


def tuned_v3_noattn() -> ml_collections.ConfigDict:
  """tuned_v3 without its two SAGAN layers (``without_attention``)."""
  return without_attention(tuned_v3())


# ``tuned`` is the best recipe measured (experiments/README.md): tuned_v2 (89.37 +- 0.12 % over 3
# seeds; its Muon and pool-order variants tie on seed 0; tuned_v1 86.7 %). Runs recorded before
# session 11 as ``tuned`` are tuned_v1's, which stays reachable under that name.
RECIPES = {"seed": seed, "tuned": tuned_v2, "tuned_v1": tuned_v1, "tuned_v2": tuned_v2,
           "tuned_v2_noattn": tuned_v2_noattn, "tuned_v2_muon": tuned_v2_muon,
           "tuned_v3": tuned_v3, "tuned_v3_noattn": tuned_v3_noattn}


def get_config(recipe: str = "seed") -> ml_collections.ConfigDict:
  return default.pick(RECIPES, "sa_cnn", recipe)
