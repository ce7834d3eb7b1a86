"""SA-CNN recipes measured in RESULTS.md and not shipped: ``--config=experiments/recipes/sa_cnn.py:NAME``.

Each is written as the change it makes to a packaged recipe (``jax_attn/configs/sa_cnn.py``).
"""
from __future__ import annotations

import ml_collections

from jax_attn import configs
from jax_attn.configs import sa_cnn


def bn_adamw() -> ml_collections.ConfigDict:
  """A batch-normed SA-CNN (3 stages of 2 x [conv-BN-ReLU] and a max-pool; 40, 80, 160
  channels; attention at 16x16 and 8x8; average pool and a Dense head: 460,362 parameters)
  trained with AdamW 4e-3 at batch 128, warm-up and cosine, label smoothing 0.1, crops and
  flips, flip TTA; Flax's default initialisation."""
  config = configs.base("sa_cnn")
  config.model.update(widths=(40, 80, 160), convs_per_stage=(2, 2, 2), pool_stages=(0, 1, 2),
                      attention_stages=(0, 1), norm="batch", head="gap_dense",
                      attention_scale="inv_sqrt_dim", pytorch_init=False)
  config.batch_size, config.learning_rate = 128, 4e-3
  config.optimizer, config.weight_decay, config.grad_clip_norm = "adamw", 5e-2, 1.0
  config.schedule, config.warmup_epochs = "warmup_cosine", 1.0
  config.label_smoothing, config.eval_flip = 0.1, True
  config.augment.normalization, config.augment.crop_padding = "mean_std", 4
  config.augment.flip = True
  return config


def bn_adamw_residual() -> ml_collections.ConfigDict:
  """``bn_adamw`` with 3, 3 and 2 convs per stage, pooled after the first, and an identity
  shortcut around each conv that keeps the stage's width."""
  config = bn_adamw()
  config.model.update(convs_per_stage=(3, 3, 2), pool_position="after_first_conv",
                      residual=True)
  return config


def airbench_muon() -> ml_collections.ConfigDict:
  """``airbench`` with its 3x3 convolution filters trained by Muon (rate 0.24 at the schedule's
  peak, momentum 0.6, each kernel kept at Frobenius norm sqrt(out): airbench94_muon's)."""
  config = sa_cnn.airbench()
  config.optimizer, config.muon_learning_rate, config.muon_momentum = "muon", 0.24, 0.6
  return config


def airbench_muon_pool_first() -> ml_collections.ConfigDict:
  """``airbench_muon`` with airbench's order in each stage's first conv: conv -> pool ->
  batch norm -> GELU (``airbench`` pools after the GELU). The same parameters."""
  config = airbench_muon()
  config.model.pool_position = "before_first_norm"
  return config


RECIPES = {f.__name__: f for f in (bn_adamw, bn_adamw_residual, airbench_muon,
                                   airbench_muon_pool_first)}


def get_config(recipe: str) -> ml_collections.ConfigDict:
  return configs.pick(RECIPES, {}, "sa_cnn", recipe)
