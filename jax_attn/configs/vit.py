"""ViT recipes: ``get_config(name)`` for a name in ``RECIPES`` or ``ALIASES``.

    python -m jax_attn.main --config=jax_attn/configs/vit.py:conv_tokens --config.model.depth=6

Copy this file to write a recipe of your own; every setting is listed in ``default.py``.
"""
from __future__ import annotations

import ml_collections

from jax_attn import configs


def notebook() -> ml_collections.ConfigDict:
  """The notebook's network and training: Adam 1e-3, batch 64, 10 epochs, no augmentation."""
  return configs.base("vit")


def conv_tokens() -> ml_collections.ConfigDict:
  """The best ViT measured: tokens from airbench's convolution trunk, mixed by 4 encoder blocks.

  Network (546,115 parameters): the ``airbench`` tokenizer (frozen patch whitening, conv 64 ->
  pool -> conv 64, conv 128 -> pool, batch norm and GELU: 7x7 tokens of width 128), a class
  token, 4 pre-norm blocks (4 heads, MLP 128) each with a zero-initialised depth-wise 5x5
  convolution of the token grid beside its attention, and the class token beside a sequence
  pooling of the others; Flax's default initialisation. Training: AdamW 2e-3 (weight decay 0.05, clipping at norm 1) at batch
  125, 2 warm-up epochs then cosine; label smoothing 0.2; lookahead every 40 steps at decay
  0.9936; translations of +-2 px and alternating flips; 6 test-time views.
  """
  config = configs.base("vit")
  config.model.update(
      tokenizer="airbench", stem_widths=(64,), stem_convs=(2, 1), hidden_dim=128, num_heads=4,
      mlp_dim=128, depth=4, dropout_rate=0.0, attention_scale="inv_sqrt_dim",
      norm_position="pre", pooling="class_seq", token_init_std=0.02, local_kernel=5,
      pytorch_init=False)
  config.update(dict(batch_size=125, learning_rate=2e-3, optimizer="adamw", weight_decay=5e-2,
                     grad_clip_norm=1.0, schedule="warmup_cosine", warmup_epochs=2.0,
                     label_smoothing=0.2, lookahead_every_steps=40, lookahead_decay=0.9936,
                     eval_flip=True, eval_translate=1))
  config.augment.update(dict(normalization="mean_std", crop_padding=2, flip=True,
                             alternating_flip=True))
  return config


RECIPES = {"notebook": notebook, "conv_tokens": conv_tokens}
ALIASES = {"seed": "notebook", "tuned": "conv_tokens"}


def get_config(recipe: str = "notebook") -> ml_collections.ConfigDict:
  return configs.pick(RECIPES, ALIASES, "vit", recipe)
