"""ViT recipes measured in RESULTS.md and not shipped: ``--config=experiments/recipes/vit.py:NAME``.

Each is written as the change it makes to another recipe (``jax_attn/configs/vit.py``).
"""
from __future__ import annotations

import ml_collections

from jax_attn import configs
from jax_attn.configs import vit


def notebook_flax_init() -> ml_collections.ConfigDict:
  """The notebook ViT started from Flax's default initialisation (lecun-normal weights, zero
  biases) instead of PyTorch's."""
  config = vit.notebook()
  config.model.pytorch_init = False
  return config


def patch4() -> ml_collections.ConfigDict:
  """4x4 patches (64 tokens and the class token), 4 pre-norm blocks of width 128 with 4 heads,
  trained with AdamW 2e-3 at batch 128, warm-up and cosine, label smoothing 0.1, crops and
  flips; Flax's default initialisation."""
  config = configs.base("vit")
  config.model.update(patch_size=4, hidden_dim=128, num_heads=4, mlp_dim=256, depth=4,
                      dropout_rate=0.0, attention_scale="inv_sqrt_dim", norm_position="pre",
                      token_init_std=0.02, pytorch_init=False)
  config.update(dict(batch_size=128, learning_rate=2e-3, optimizer="adamw", weight_decay=5e-2,
                     grad_clip_norm=1.0, schedule="warmup_cosine", warmup_epochs=1.0,
                     label_smoothing=0.1))
  config.augment.update(dict(normalization="mean_std", crop_padding=4, flip=True))
  return config


def cct_adamw() -> ml_collections.ConfigDict:
  """``patch4``'s training (and flip TTA) on convolutional tokens: the ``cct`` tokenizer (3x3
  conv 64 -> pool -> 3x3 conv 128 -> pool: 8x8 tokens), an MLP of 128."""
  config = patch4()
  config.model.update(tokenizer="cct", stem_widths=(64,), mlp_dim=128, patch_size=16)
  config.eval_flip = True
  return config


def cct_seqpool() -> ml_collections.ConfigDict:
  """``cct_adamw`` with the class token beside sequence pooling, trained with ``conv_tokens``'
  data handling: label smoothing 0.2, translations of +-2 px with alternating flips, 6-view
  TTA, lookahead every 40 steps at decay 0.9936 (its average spans as many examples as
  airbench's 5 steps of 1,000 at 0.95), batch 125, 2 warm-up epochs."""
  config = cct_adamw()
  config.model.pooling = "class_seq"
  config.batch_size, config.warmup_epochs, config.label_smoothing = 125, 2.0, 0.2
  config.lookahead_every_steps, config.lookahead_decay = 40, 0.9936
  config.augment.crop_padding, config.augment.alternating_flip = 2, True
  config.eval_translate = 1
  return config


def conv_tokens_nolocal() -> ml_collections.ConfigDict:
  """``conv_tokens`` without local mixing."""
  config = vit.conv_tokens()
  config.model.local_kernel = 0
  return config


def conv_tokens_local3() -> ml_collections.ConfigDict:
  """``conv_tokens`` with a 3x3 local-mixing kernel instead of 5x5."""
  config = vit.conv_tokens()
  config.model.local_kernel = 3
  return config


RECIPES = {f.__name__: f for f in (notebook_flax_init, patch4, cct_adamw, cct_seqpool, conv_tokens_nolocal,
                                   conv_tokens_local3)}


def get_config(recipe: str) -> ml_collections.ConfigDict:
  return configs.pick(RECIPES, {}, "vit", recipe)
