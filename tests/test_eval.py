"""The train and eval step bodies under jit and without, on a device and not (chex variants):
masked sums, flip test-time augmentation, one SGD step by hand."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized

import tiny
from jax_attn.data import augment
from jax_attn.train.state import create_state
from jax_attn.train.steps import make_eval_body, make_train_body


def _state_and_batch():
  model = tiny.model("vit", dropout_rate=0.0)
  state = create_state(model, optax.sgd(0.1), 0, (8, 8, 3))
  images = jax.random.randint(jax.random.key(1), (6, 8, 8, 3), 0, 256).astype(jnp.uint8)
  batch = {"image": images, "label": jnp.arange(6) % 10, "position": jnp.arange(6),
           "index": jnp.arange(6), "mask": jnp.array([True] * 5 + [False])}
  return model, state, batch


class StepTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_flip_averages_logits_of_image_and_mirror_and_keeps_plain_accuracy(self):
    model, state, batch = _state_and_batch()
    config = tiny.augment()
    evaluate = lambda flip: self.variant(  # noqa: E731
        lambda s, b: make_eval_body(model, config, flip=flip)(s, b, None))
    plain, flipped = evaluate(False)(state, batch), evaluate(True)(state, batch)
    assert int(flipped["correct_no_flip"]) == int(plain["correct"]) and int(flipped["count"]) == 5

    def logits(images):
      return model.apply({"params": state.params}, augment.preprocess(images, config))

    mean = (logits(batch["image"]) + logits(batch["image"][:, :, ::-1])) / 2
    losses = optax.softmax_cross_entropy_with_integer_labels(mean, batch["label"])[:5]
    np.testing.assert_allclose(flipped["loss_sum"], losses.sum(), rtol=1e-5)
    assert int(flipped["correct"]) == int((jnp.argmax(mean, -1) == batch["label"])[:5].sum())
    # mirror-symmetric images: the augmented prediction is the plain one
    symmetric = dict(batch, image=jnp.concatenate([batch["image"][:, :, :4],
                                                  batch["image"][:, :, 3::-1]], axis=2))
    np.testing.assert_allclose(evaluate(True)(state, symmetric)["loss_sum"],
                               evaluate(False)(state, symmetric)["loss_sum"], rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_train_step_is_one_sgd_step_on_the_mean_loss(self):
    model, state, batch = _state_and_batch()
    config = tiny.augment()
    step = self.variant(lambda s, b: make_train_body(model, optax.sgd(0.1), config, 0.0)(
        s, b, None))
    new, metrics = step(state, batch)

    def loss(params):
      logits = model.apply({"params": params}, augment.preprocess(batch["image"], config))
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    grads = jax.grad(loss)(state.params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss(state.params), rtol=1e-5)
    assert int(new.step) == 1
