"""Each training technique does what its setting says, and the packaged recipes resolve to the
documented optimizer, schedule and augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
import pytest

import tiny
from jax_attn import configs, models
from jax_attn.data import augment
from jax_attn.models import whitening
from jax_attn.train import optim
from jax_attn.train.state import Lookahead, create_state
from jax_attn.train.steps import make_eval_body, make_train_body


def _image(height=6, width=6):
  """A small image whose every pixel is distinct: any move or mirror changes it."""
  values = np.arange(height * width * 3, dtype=np.uint8).reshape(1, height, width, 3)
  return jnp.asarray(values)


# ------------------------------------------------------------------ augmentation
def test_alternating_flip_mirrors_each_example_in_exactly_one_of_two_epochs():
  key = jax.random.key(3)
  indices = jnp.arange(2000)
  flips = [np.asarray(augment.alternating_flips(key, indices, jnp.int32(e))) for e in range(5)]
  for a, b in zip(flips, flips[1:]):
    assert np.all(a ^ b)  # exactly one of any two consecutive epochs
  assert 0.45 < flips[0].mean() < 0.55  # a fair coin per example in the first epoch
  other_seed = np.asarray(augment.alternating_flips(jax.random.key(4), indices, jnp.int32(0)))
  assert not np.array_equal(other_seed, flips[0])


_SEEN = []


class _Probe(nn.Module):
  """Records the images it is applied to in ``_SEEN`` (a host callback); zero logits."""

  @nn.compact
  def __call__(self, images, *, train=False):
    jax.debug.callback(lambda x: _SEEN.append(np.asarray(x)), images)
    return jnp.zeros((images.shape[0], 10)) + self.param("w", nn.initializers.zeros, (10,))


def test_train_step_uses_the_alternating_flip_of_index_and_epoch():
  """Through the train body: the images a step trains on are the documented ones."""
  seen = _SEEN
  probe = _Probe()
  config = tiny.augment(flip=True, alternating_flip=True)
  state = create_state(probe, optax.sgd(0.0), 0, (8, 8, 3))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)), jnp.uint8)
  batch = {"image": images, "label": jnp.arange(4), "position": jnp.arange(4),
           "index": jnp.array([10, 11, 12, 13])}
  body = make_train_body(probe, optax.sgd(0.0), config, 0.0, steps_per_epoch=5)
  plain = np.asarray(augment.normalize(images, "reference"))
  rng = jax.random.wrap_key_data(state.rng)
  flips = []
  for epoch in (0, 1, 2):
    jax.block_until_ready(body(state.replace(step=jnp.int32(5 * epoch + 3)), batch, None))
    expected = np.asarray(augment.alternating_flips(jax.random.fold_in(rng, 2**31 - 1),
                                                    batch["index"], jnp.int32(epoch)))
    for trained, image, flip in zip(seen[-1], plain, expected):
      np.testing.assert_array_equal(trained, image[:, ::-1] if flip else image)
    flips.append(expected)
  assert np.all(flips[0] ^ flips[1]) and np.array_equal(flips[0], flips[2])


def test_crop_moves_and_flip_mirrors_expected_pixels():
  image = _image()
  x = augment.normalize(image, "reference")
  moved = augment.translate(x, 1, -2)
  np.testing.assert_array_equal(moved[0, 1:, :4], x[0, :-1, 2:])  # content moved down 1, left 2
  np.testing.assert_array_equal(moved[0, 0], moved[0, 2])  # border filled by reflection
  config = tiny.augment(crop_padding=2)
  crops = augment.preprocess(jnp.repeat(image, 64, 0), config, jax.random.key(0), jnp.arange(64))
  distinct = {np.asarray(c).tobytes() for c in crops}
  assert len(distinct) > 10  # the crop moves (25 positions)
  assert any(np.array_equal(c, x[0]) for c in crops)  # the centre crop is the image


@pytest.mark.parametrize("flip, shift, expected", [
    (False, 0, [(1.0, 0, False)]),
    (True, 0, [(0.5, 0, False), (0.5, 0, True)]),
    (False, 2, [(0.5, 0, False), (0.25, 2, False), (0.25, -2, False)]),
    (True, 1, [(0.25, 0, False), (0.25, 0, True), (0.125, 1, False), (0.125, 1, True),
               (0.125, -1, False), (0.125, -1, True)]),
])
def test_tta_views_are_the_named_ones(flip, shift, expected):
  assert augment.tta_views(flip, shift) == expected


def test_tta_logits_weigh_each_view_by_its_named_weight():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  apply = lambda v: v.mean(axis=(2, 3))  # noqa: E731  (one "logit" per image row)
  logits, plain = augment.tta_logits(apply, images, flip=False, shift=2)
  expected = (0.5 * apply(images) + 0.25 * apply(augment.translate(images, 2, 2))
              + 0.25 * apply(augment.translate(images, -2, -2)))
  np.testing.assert_allclose(logits, expected, rtol=1e-6)
  np.testing.assert_array_equal(plain, apply(images))
  logits, _ = augment.tta_logits(apply, images, flip=True, shift=0)
  np.testing.assert_allclose(logits, 0.5 * apply(images) + 0.5 * apply(images[:, :, ::-1]),
                             rtol=1e-6)


def test_eval_with_translate_averages_the_named_views():
  model = tiny.model("vit")
  state = create_state(model, optax.adam(1e-3), 0, (8, 8, 3))
  images = jax.random.randint(jax.random.key(1), (4, 8, 8, 3), 0, 256).astype(jnp.uint8)
  batch = {"image": images, "label": jnp.arange(4), "mask": jnp.ones(4, bool)}
  config = tiny.augment()
  sums = make_eval_body(model, config, flip=True, shift=1)(state, batch, None)
  x = augment.normalize(images, "reference")
  f = lambda v: model.apply({"params": state.params}, v)  # noqa: E731
  views = [x, x[:, :, ::-1], augment.translate(x, 1, 1), augment.translate(x, 1, 1)[:, :, ::-1],
           augment.translate(x, -1, -1), augment.translate(x, -1, -1)[:, :, ::-1]]
  logits = sum(w * f(v) for w, v in zip([.25, .25, .125, .125, .125, .125], views))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).sum()
  np.testing.assert_allclose(sums["loss_sum"], loss, rtol=1e-5)
  assert int(sums["correct_no_flip"]) == int((jnp.argmax(f(x), -1) == batch["label"]).sum())


# ------------------------------------------------------------------ whitening
def test_whitening_output_has_identity_covariance_over_training_patches():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(300, 8, 8, 3))
  images[..., 1] += 0.9 * images[..., 0]  # correlated channels, like real images
  images[:, :, 1:] += 0.8 * images[:, :, :-1]  # correlated neighbours
  kernel = whitening.whitening_kernel(images, 2, eps=1e-8)
  assert kernel.shape == (2, 2, 3, 24)
  out = whitening.patches(images, 2) @ kernel.reshape(12, 24)
  half = out[:, :12]
  np.testing.assert_allclose(half.T @ half / len(half), np.eye(12), atol=1e-4)
  np.testing.assert_array_equal(out[:, 12:], -half)  # each filter with its negation
  # the layer applies these filters as a valid 2x2 convolution
  params = whitening.PatchWhitening().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  params = whitening.set_whitening(params, images)
  conv = whitening.PatchWhitening().apply({"params": params}, jnp.asarray(images[:2], jnp.float32))
  np.testing.assert_allclose(np.asarray(conv).reshape(-1, 24), out[:2 * 49], rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ optimizer and lookahead
def _optimizer(params, batch_stats, **settings):
  config = configs.base("sa_cnn")
  config.update(settings)
  return optim.make_optimizer(config, optim.make_schedule(config, 1), 1, params, batch_stats)


def test_param_groups_and_their_rates():
  params = {"whiten": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "bn1": {"bias": jnp.ones(3)}, "conv1": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
  batch_stats = {"bn1": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
  groups = optim.param_groups(params, batch_stats)
  assert groups == {"whiten": {"kernel": "whiten_kernel", "bias": "whiten_bias"},
                    "bn1": {"bias": "bn_bias"}, "conv1": {"kernel": "default", "bias": "default"}}
  tx = _optimizer(params, batch_stats, optimizer="sgd", learning_rate=0.1, momentum=0.0,
                  weight_decay=0.01, bias_lr_scale=64.0, whiten_bias_epochs=2.0, epochs=10)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  assert float(updates["whiten"]["kernel"].max()) == 0.0  # frozen
  np.testing.assert_allclose(updates["conv1"]["kernel"], -0.1 * (1 + 0.01))
  np.testing.assert_allclose(updates["bn1"]["bias"], -6.4 * (1 + 0.01 / 64), rtol=1e-6)
  np.testing.assert_allclose(updates["whiten"]["bias"], -0.1 * 1.01)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
  assert float(jnp.abs(updates["whiten"]["bias"]).max()) == 0.0  # past whiten_bias_epochs


def test_muon_orthogonalises_filter_steps_and_keeps_their_norm():
  """--optimizer=muon: a 3x3 kernel is rescaled to Frobenius norm sqrt(out) and moves by
  -rate x an orthogonalised step (singular values near 1, aligned with the gradient); the
  whitening filters stay frozen and the head and batch-norm biases take plain SGD-Nesterov."""
  params = {"whiten": {"kernel": jnp.ones((2, 2, 3, 24))},
            "conv1": {"kernel": 3.0 * jax.random.normal(jax.random.key(0), (3, 3, 24, 16))},
            "bn1": {"bias": jnp.ones(16)}, "head": {"kernel": jnp.ones((16, 10))}}
  batch_stats = {"bn1": {"mean": jnp.zeros(16)}}
  groups = optim.param_groups(params, batch_stats, filters=True)
  assert groups == {"whiten": {"kernel": "whiten_kernel"}, "conv1": {"kernel": "filters"},
                    "bn1": {"bias": "bn_bias"}, "head": {"kernel": "default"}}
  assert optim.param_groups(params, {}, filters=False)["conv1"]["kernel"] == "default"
  tx = _optimizer(params, batch_stats, optimizer="muon", learning_rate=0.5, momentum=0.85,
                  muon_learning_rate=0.1, muon_momentum=0.6)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  kernel = params["conv1"]["kernel"]
  rescaled = kernel * 4.0 / jnp.linalg.norm(kernel)  # sqrt(16 output channels)
  step = np.asarray((new["conv1"]["kernel"] - rescaled) / -0.1).reshape(-1, 16)  # muon's rate
  singular = np.linalg.svd(step, compute_uv=False)
  assert 0.5 < singular.min() and singular.max() < 1.3, singular  # orthogonalised, not the grad
  assert np.sum(step * np.asarray(grads["conv1"]["kernel"]).reshape(-1, 16)) > 0  # downhill
  assert float(jnp.abs(updates["whiten"]["kernel"]).max()) == 0.0
  np.testing.assert_allclose(updates["head"]["kernel"], -0.5 * 1.85 * grads["head"]["kernel"],
                             rtol=1e-5)  # Nesterov's first step: (1 + momentum) x gradient


def test_lookahead_weights_are_the_documented_average():
  model = tiny.model("sa_cnn", norm="batch")
  tx = optax.sgd(0.05)
  state = create_state(model, tx, 0, (8, 8, 3), lookahead=True)
  lookahead = Lookahead(every_steps=2, decay=0.9, total_steps=4)
  images = jax.random.randint(jax.random.key(1), (4, 8, 8, 3), 0, 256).astype(jnp.uint8)
  batch = {"image": images, "label": jnp.arange(4), "position": jnp.arange(4),
           "index": jnp.arange(4)}
  config = tiny.augment()
  plain = jax.jit(lambda s: make_train_body(model, tx, config, 0.0)(s, batch, None)[0])
  averaged = jax.jit(lambda s: make_train_body(model, tx, config, 0.0, 1, lookahead)(s, batch, None)[0])
  s1 = averaged(state)  # step 1: no averaging
  chex_equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)  # noqa: E731
  chex_equal(s1.params, plain(state).params)
  fast = plain(s1)  # step 2 without the average
  s2 = averaged(s1)
  rho = 0.9 ** 2 * (2 / 4) ** 3
  expected = jax.tree.map(lambda s, f: rho * s + (1 - rho) * f, state.params, fast.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), s2.params, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), s2.slow["params"], expected)
  expected_stats = jax.tree.map(lambda s, f: rho * s + (1 - rho) * f, state.batch_stats, fast.batch_stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), s2.batch_stats, expected_stats)
  s4 = averaged(averaged(s2))  # the last step: the weights are the slow average
  jax.tree.map(np.testing.assert_array_equal, s4.params, s4.slow["params"])


# ------------------------------------------------------------------ the packaged recipes
DOCUMENTED = {  # what the recipes' docstrings promise
    "notebook": dict(optimizer="adam", schedule="constant", learning_rate=1e-3, batch_size=64,
                     weight_decay=0.0, grad_clip_norm=0.0, label_smoothing=0.0, eval_flip=False,
                     eval_translate=0, lookahead_every_steps=0),
    "airbench": dict(optimizer="sgd", schedule="warmup_linear", batch_size=1000,
                     learning_rate=1.5, momentum=0.85, weight_decay=0.0153 / 11.5,
                     bias_lr_scale=64.0, grad_clip_norm=0.0, warmup_epochs=2.3,
                     lr_warmup_start=0.2, lr_final=0.07, whiten_bias_epochs=3.0,
                     lookahead_every_steps=5, lookahead_decay=0.95, label_smoothing=0.2,
                     eval_flip=True, eval_translate=1),
    "conv_tokens": dict(optimizer="adamw", schedule="warmup_cosine", batch_size=125,
                        learning_rate=2e-3, weight_decay=5e-2, grad_clip_norm=1.0,
                        warmup_epochs=2.0, lookahead_every_steps=40, lookahead_decay=0.9936,
                        label_smoothing=0.2, eval_flip=True, eval_translate=1),
}


@pytest.mark.parametrize("model, recipe", [
    ("sa_cnn", "notebook"), ("vit", "notebook"), ("sa_cnn", "airbench"),
    ("sa_cnn", "airbench_noattn"), ("vit", "conv_tokens")])
def test_recipe_resolves_to_documented_training(model, recipe):
  config = configs.get_recipe(model, recipe)
  for key, value in DOCUMENTED[recipe.removesuffix("_noattn")].items():
    assert config[key] == value, key
  if model == "vit":
    assert (config.model.tokenizer, config.model.local_kernel) == (
        ("patch", 0) if recipe == "notebook" else ("airbench", 5))
  else:
    assert config.model.attention_stages == {"notebook": (0, 1, 2, 3), "airbench": (0, 1),
                                             "airbench_noattn": ()}[recipe]
  augmented = recipe != "notebook"
  assert config.augment.normalization == ("mean_std" if augmented else "reference")
  assert (config.augment.crop_padding, config.augment.flip, config.augment.alternating_flip) == (
      (2, True, True) if augmented else (0, False, False))
  if augmented:
    assert 45000 % config.batch_size == 0  # every example is seen exactly once an epoch
  per_epoch = 45000 // config.batch_size
  steps = per_epoch * config.epochs
  warm = round(config.warmup_epochs * per_epoch)
  schedule = optim.make_schedule(config, per_epoch)
  lr = config.learning_rate
  if recipe == "notebook":
    assert float(schedule(0)) == float(schedule(steps - 1)) == 1e-3
  elif config.schedule == "warmup_linear":  # 0.2x -> 1x over the warm-up, then to 0.07x
    assert float(schedule(0)) == pytest.approx(0.2 * lr)
    assert float(schedule(warm)) == pytest.approx(lr)
    assert float(schedule(steps - 1)) == pytest.approx(0.07 * lr)
    half = (steps - 1 - warm) // 2  # linear in between: halfway down the decay
    assert float(schedule(warm + half)) == pytest.approx(
        lr * (1 - 0.93 * half / (steps - 1 - warm)), rel=1e-5)
    assert float(schedule(warm // 2)) == pytest.approx(lr * (0.2 + 0.8 * (warm // 2) / warm))
  else:
    assert float(schedule(0)) == 0.0 and float(schedule(steps)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(warm)) == pytest.approx(lr, rel=1e-3)


# ------------------------------------------------------------------ airbench's SA-CNN
def test_dirac_init_starts_convs_as_the_identity():
  from jax_attn.models.initializers import dirac
  kernel = dirac(nn.initializers.lecun_normal())(jax.random.key(0), (3, 3, 4, 6))
  x = jax.random.normal(jax.random.key(1), (1, 5, 5, 4))
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # the first min(in, out) filters pass through
  assert float(jnp.abs(kernel[..., 4:]).sum()) > 0  # the others keep the base init


@pytest.mark.slow  # full-size networks, compiled
def test_airbench_sa_cnn_budget_attention_and_ablation():
  """<= 550,000 parameters (frozen whitening filters included), two SAGAN layers, and the
  ablation within 2 % of its parameter count."""
  with_attention = configs.get_recipe("sa_cnn", "airbench", image_size=32)
  without = configs.get_recipe("sa_cnn", "airbench_noattn", image_size=32)
  shapes = models.param_shapes(models.get_model(with_attention), (32, 32, 3))
  count = models.count_params(shapes)
  ablation = models.count_params(models.param_shapes(models.get_model(without), (32, 32, 3)))
  assert count <= 550_000 and abs(ablation - count) / count < 0.02
  assert [k for k in shapes if k.startswith("sa")] == ["sa1", "sa2"]
  assert "gamma" in shapes["sa1"] and shapes["stem"]["whiten"]["kernel"].shape == (2, 2, 3, 24)
  assert not [k for k in models.param_shapes(models.get_model(without), (32, 32, 3))
              if k.startswith("sa")]
  assert all("scale" not in v for k, v in shapes.items() if k.startswith("bn"))  # no BN scale
  model = models.get_model(with_attention)
  variables = models.init_variables(model, jax.random.key(0), (32, 32, 3))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  _, sown = model.apply(variables, images, mutable=["intermediates"])
  weights = jax.tree.leaves(sown["intermediates"])
  assert [w.shape for w in weights] == [(2, 1, 225, 225), (2, 1, 49, 49)]  # at 15x15 and 7x7


@pytest.mark.slow
@pytest.mark.parametrize("model, recipe, settings", [
    ("sa_cnn", "airbench", {}), ("sa_cnn", "airbench", {"optimizer": "muon"}),
    ("vit", "conv_tokens", {})])
def test_trainer_fills_the_whitening_filters_and_freezes_them(tmp_path, model, recipe, settings):
  """A short run on synthetic data (SGD, Muon on the filters, and the ViT's AdamW with its
  airbench tokenizer): the stem's filters are the whitening of the training images and do not
  change."""
  import orbax.checkpoint as ocp
  from jax_attn import data
  from jax_attn.train import loop
  small = ({"model.widths": (8, 16, 16)} if model == "sa_cnn" else
           {"model.stem_widths": (8,), "model.hidden_dim": 16, "model.num_heads": 2,
            "model.mlp_dim": 16, "model.depth": 1,
            "lookahead_every_steps": 4})  # (at 40, this 16-step run would end on its start)
  config = configs.get_recipe(model, recipe, **{
      "data.synthetic": True, "data.synthetic_size": 256, "image_size": 16,
      "batch_size": 32, "epochs": 2, "whiten_bias_epochs": 1.0, "log_every_steps": 4, **small,
      **settings})
  loop.train_and_evaluate(config, tmp_path)
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  state = manager.restore(manager.latest_step())["state"]
  split = data.make_source(config).load("train")
  images = np.asarray(augment.normalize(split.images[:5000], "mean_std"))
  params = state["params"] if model == "sa_cnn" else state["params"]["airbench_tokenizer"]
  np.testing.assert_allclose(params["stem"]["whiten"]["kernel"],
                             whitening.whitening_kernel(images), rtol=1e-4, atol=1e-5)
  if model == "vit":  # the tokenizer's batch norms kept running statistics
    stats = state["batch_stats"]["airbench_tokenizer"]
    assert sorted(stats) == ["bn1", "bn2", "bn3"]
    assert float(np.abs(stats["bn1"]["mean"]).sum()) > 0
  if settings.get("optimizer") == "muon":  # every other conv kernel ends at Frobenius norm sqrt(out)
    kernels = [v["kernel"] for k, v in state["params"].items() if k.startswith("conv")]
    assert len(kernels) == 6 and all(np.isfinite(k).all() for k in kernels)
    for k in kernels:  # (the last lookahead average mixes slightly different kernels)
      assert np.linalg.norm(k) == pytest.approx(np.sqrt(k.shape[-1]), rel=0.05)
