"""The eval step: masked sums, and flip test-time augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tiny
from jax_attn.data import augment
from jax_attn.train.state import create_state
from jax_attn.train.steps import make_eval_body


def _state_and_batch():
  model = tiny.model("vit")
  state = create_state(model, optax.adam(1e-3), 0, (8, 8, 3))
  images = jax.random.randint(jax.random.key(1), (6, 8, 8, 3), 0, 256).astype(jnp.uint8)
  batch = {"image": images, "label": jnp.arange(6) % 10,
           "mask": jnp.array([True] * 5 + [False])}
  return model, state, batch


def test_flip_averages_logits_of_image_and_mirror_and_keeps_plain_accuracy():
  model, state, batch = _state_and_batch()
  config = tiny.augment()
  plain = make_eval_body(model, config)(state, batch, None)
  flipped = make_eval_body(model, config, flip=True)(state, batch, None)
  assert int(flipped["correct_no_flip"]) == int(plain["correct"]) and int(flipped["count"]) == 5

  def logits(images):
    return model.apply({"params": state.params}, augment.preprocess(images, config))

  mean = (logits(batch["image"]) + logits(batch["image"][:, :, ::-1])) / 2
  losses = optax.softmax_cross_entropy_with_integer_labels(mean, batch["label"])[:5]
  np.testing.assert_allclose(flipped["loss_sum"], losses.sum(), rtol=1e-5)
  correct = (jnp.argmax(mean, -1) == batch["label"])[:5].sum()
  assert int(flipped["correct"]) == int(correct)
  # mirror-symmetric images: the augmented prediction is the plain one
  symmetric = dict(batch, image=jnp.concatenate([batch["image"][:, :, :4],
                                                batch["image"][:, :, 3::-1]], axis=2))
  with_flip = make_eval_body(model, config, flip=True)(state, symmetric, None)
  without = make_eval_body(model, config)(state, symmetric, None)
  np.testing.assert_allclose(with_flip["loss_sum"], without["loss_sum"], rtol=1e-5)
