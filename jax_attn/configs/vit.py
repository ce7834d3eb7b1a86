"""ViT recipes: ``get_config(name)`` for a name in ``RECIPES`` (seed, tuned = tuned_v5, ...).

    python -m jax_attn.main --config=jax_attn/configs/vit.py:tuned --config.model.depth=6

Copy this file to write a recipe of your own; every setting is listed in ``default.py``.
"""
from __future__ import annotations

import ml_collections

from jax_attn.configs import default


def seed() -> ml_collections.ConfigDict:
  """The reference notebook: Adam 1e-3, batch 64, 10 epochs, no augmentation."""
  return default.for_model("vit", "seed")


def tuned_v1() -> ml_collections.ConfigDict:
  """Convolutional tokens (preset tuned_conv: 8x8 tokens + class, 4 pre-norm blocks of width
  128, 4 heads), AdamW + warm-up cosine at batch 128 / 2e-3, crop + flip, label smoothing 0.1,
  flip TTA: 78.42 % (experiments/README.md)."""
  config = default.for_model("vit", "tuned_conv")
  config.update(dict(batch_size=128, learning_rate=2e-3, optimizer="adamw", weight_decay=5e-2,
                     grad_clip_norm=1.0, schedule="warmup_cosine", warmup_epochs=1.0,
                     label_smoothing=0.1, eval_flip=True))
  config.augment.update(dict(normalization="mean_std", crop_padding=4, flip=True))
  return config


def tuned_v2() -> ml_collections.ConfigDict:
  """tuned_v1's ViT with the class token beside sequence pooling (pooling class_seq), trained
  with the tuned_v2 SA-CNN's data handling: label smoothing 0.2, translate +-2 px with
  alternating flip, 6-view TTA, lookahead. tuned_v1's rate and nearly its batch (125, so 360
  steps see every example each epoch), 2 warm-up epochs; lookahead every 40 steps at decay
  0.9936 per step, so its average spans as many examples as the SA-CNN's (5 steps of 1,000,
  0.95 per step: 0.9936 ** 40 = 0.95 ** 5 = 0.774)."""
  config = tuned_v1()
  config.model.pooling = "class_seq"
  config.batch_size, config.learning_rate, config.warmup_epochs = 125, 2e-3, 2.0
  config.label_smoothing = 0.2
  config.lookahead_every_steps, config.lookahead_decay = 40, 0.9936
  config.augment.crop_padding, config.augment.alternating_flip = 2, True
  config.eval_translate = 1
  return config


def tuned_v3() -> ml_collections.ConfigDict:
  """tuned_v2 with airbench's convolution trunk as the tokenizer
  (``cnn``: frozen patch whitening, conv 64 -> pool -> conv 64 at 15x15, conv 128 -> pool: 7x7
  tokens + class; batch norm without scale and GELU), 124,984 of its 532,803 parameters, 4
  encoder blocks as before (398,336, 75 %); the whitening bias trains for the first 3 epochs."""
  config = tuned_v2()
  with config.ignore_type():  # stem_convs: one count per stage, where the default is one int
    config.model.tokenizer, config.model.stem_convs = "cnn", (2, 1)
  return config


def tuned_v4() -> ml_collections.ConfigDict:
  """tuned_v3 with a depth-wise 3x3 convolution of the 7x7 token grid beside the attention in
  each encoder block (``local_kernel=3``, zero-initialised): 537,923 parameters; 84.9 % over 3
  seeds against tuned_v3's 84.1 %."""
  config = tuned_v3()
  config.model.local_kernel = 3
  return config


def tuned_v5() -> ml_collections.ConfigDict:
  """The ViT's ``tuned``: tuned_v4 with a 5x5 local-mixing kernel (``local_kernel=5``): 546,115
  parameters; 85.44 % over 3 seeds against tuned_v4's 84.89 %, ahead on every seed."""
  config = tuned_v4()
  config.model.local_kernel = 5
  return config


# ``tuned`` is the best recipe measured (experiments/README.md, mean of 3 seeds): tuned_v5
# (since session 17; tuned_v4 from session 13, 84.9 %; tuned_v3 from session 11, 84.1 %;
# tuned_v2 79.2 and tuned_v1 78.4 on one seed). Runs recorded before session 11 as ``tuned`` are
# tuned_v1's, which stays reachable under that name; since then a run records the recipe the
# alias stood for.
RECIPES = {"seed": seed, "tuned": tuned_v5, "tuned_v1": tuned_v1, "tuned_v2": tuned_v2,
           "tuned_v3": tuned_v3, "tuned_v4": tuned_v4, "tuned_v5": tuned_v5}


def get_config(recipe: str = "seed") -> ml_collections.ConfigDict:
  return default.pick(RECIPES, "vit", recipe)
