"""Both model families: exact seed sizes, shapes, presets and bad configurations."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from jax_attn import models, train


def test_seed_parameter_counts_match_the_reference():
  assert models.count_params(models.param_shapes(models.get_model("sa_cnn"), (32, 32, 3))) == 520_870
  assert models.count_params(models.param_shapes(models.get_model("vit"), (32, 32, 3))) == 497_930


class OutputShapeTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=("sa_cnn", "vit"), batch=(1, 3, 64), size=(8, 16))
  def test_logits_shape(self, name, batch, size):
    model = models.get_model(name, "tiny", num_classes=7)
    variables = models.init_variables(model, jax.random.key(0), (size, size, 3))
    images = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
    logits = self.variant(lambda v, x: model.apply(v, x))(variables, images)
    chex.assert_shape(logits, (batch, 7))
    chex.assert_tree_all_finite(logits)

  def test_seed_presets_on_cifar_shape(self):
    for name in ("sa_cnn", "vit"):
      model = models.get_model(name)
      out = jax.eval_shape(lambda: model.init_with_output(
          jax.random.key(0), jnp.zeros((2, 32, 32, 3)))[0])
      assert out.shape == (2, 10)


def test_vit_dropout_only_when_training():
  model = models.get_model("vit", "tiny")
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  a = model.apply(variables, x)
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert not jnp.allclose(a, b)


def test_vit_sows_class_attention_per_block():
  model = models.get_model("vit", "tiny", depth=2)
  x = jnp.ones((3, 8, 8, 3))
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  _, state = model.apply(variables, x, mutable=["intermediates"])
  weights = jax.tree.leaves(state["intermediates"])
  assert len(weights) == 2 and all(w.shape == (3, 2, 5, 5) for w in weights)


def test_sa_cnn_batch_norm_pooling_variant():
  model = models.get_model("sa_cnn", "tiny", norm="batch", pool_stages=(0,), head="gap_dense")
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  assert "batch_stats" in variables
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and "batch_stats" in updates


def test_sa_cnn_pool_after_first_conv_and_per_stage_conv_counts():
  """Pool placement changes resolution, not parameters; a count per stage changes both."""
  def build(**overrides):
    model = models.get_model("sa_cnn", "tiny", norm="batch", pool_stages=(0, 1),
                             head="gap_dense", **overrides)
    variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    _, state = model.apply(variables, x, mutable=["intermediates"])
    maps = [w.shape for w in jax.tree.leaves(state["intermediates"])]
    return jax.tree.map(jnp.shape, variables["params"]), maps

  end_params, end_maps = build(convs_per_stage=2)
  first_params, first_maps = build(convs_per_stage=2, pool_position="after_first_conv")
  assert end_params == first_params
  # attention after stage 0 sees 4x4 = 16 positions either way; the difference is where convs run
  assert end_maps == first_maps == [(2, 16, 16), (2, 4, 4)]
  mixed_params, _ = build(convs_per_stage=(2, 1))
  assert set(mixed_params) == {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "sa1", "sa2", "head"}


def test_sa_cnn_pool_after_first_conv_runs_later_convs_at_lower_resolution():
  model = models.get_model("sa_cnn", "tiny", pool_stages=(0,), attention_stages=(),
                           convs_per_stage=2, pool_position="after_first_conv")
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  x = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  shapes = {k: v["__call__"][0].shape for k, v in state["intermediates"].items() if k.startswith("conv")}
  assert shapes["conv1"] == (1, 8, 8, 8) and shapes["conv2"] == (1, 4, 4, 8)


def test_sa_cnn_pool_before_norm_is_conv_pool_norm_activation():
  """airbench's order: batch norm standardises the pooled conv output (its batch statistics are
  the pooled map's), the activation follows; the default pools after the activation."""
  def run(pool_before_norm):
    model = models.get_model("sa_cnn", "tiny", widths=(8,), attention_stages=(), norm="batch",
                             pool_stages=(0,), bn_scale=False, head="gap_dense",
                             pool_before_norm=pool_before_norm)
    variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    _, state = model.apply(variables, x, train=True, capture_intermediates=True,
                           mutable=["intermediates", "batch_stats"])
    taps = {k: v["__call__"][0] for k, v in state["intermediates"].items() if k in ("conv1", "bn1")}
    return variables, taps, state["batch_stats"]["bn1"]

  variables, taps, stats = run(True)
  pooled = nn.max_pool(taps["conv1"], (2, 2), strides=(2, 2))
  mean, var = pooled.mean(axis=(0, 1, 2)), pooled.var(axis=(0, 1, 2))
  expected = (pooled - mean) / jnp.sqrt(var + 1e-5) + variables["params"]["bn1"]["bias"]
  assert taps["bn1"].shape == (4, 4, 4, 8)
  np.testing.assert_allclose(taps["bn1"], expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)  # momentum 0.9
  _, default_taps, _ = run(False)
  assert default_taps["bn1"].shape == (4, 8, 8, 8)
  # with the pool at a stage's end and a residual conv there, the shortcut is pooled too
  model = models.get_model("sa_cnn", "tiny", widths=(8,), attention_stages=(), norm="batch",
                           convs_per_stage=2, residual=True, pool_stages=(0,),
                           head="gap_dense", pool_before_norm=True)
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  assert model.apply(variables, jnp.ones((1, 8, 8, 3))).shape == (1, 10)


def test_sa_cnn_residual_shortcut_around_the_same_width_conv():
  """One stage of two convs: only the second (8 -> 8 channels) gets the shortcut. With that
  conv switched off (zero kernel, batch-norm bias -1: ReLU gives 0) the residual model's
  features are the first conv's, the plain model's are zero."""
  def build(residual):
    return models.get_model("sa_cnn", "tiny", widths=(8,), convs_per_stage=2, norm="batch",
                            attention_stages=(), head="gap_dense", residual=residual)
  plain, residual = build(False), build(True)
  variables = models.init_variables(residual, jax.random.key(0), (8, 8, 3))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, models.init_variables(plain, jax.random.key(0), (8, 8, 3)))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  assert not np.allclose(plain.apply(variables, x), residual.apply(variables, x))
  params = dict(variables["params"])
  params["conv2"] = {"kernel": jnp.zeros_like(params["conv2"]["kernel"])}
  params["bn2"] = {**params["bn2"], "bias": -jnp.ones_like(params["bn2"]["bias"])}
  switched_off = {**variables, "params": params}
  logits, state = residual.apply(switched_off, x, capture_intermediates=True,
                                 mutable=["intermediates"])
  first = jax.nn.relu(state["intermediates"]["bn1"]["__call__"][0])
  head = params["head"]
  np.testing.assert_allclose(logits, jnp.mean(first, axis=(1, 2)) @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(plain.apply(switched_off, x), jnp.broadcast_to(head["bias"], (2, 10)),
                             atol=1e-6)


@pytest.mark.parametrize("name, overrides, image, message", [
    ("vit", {"patch_size": 5}, 16, "16x16 is not divisible by the patch tokenizer's stride 5"),
    ("vit", {"num_heads": 3}, 8, "num_heads=3 does not divide hidden_dim=16"),
    ("vit", {"hidden_dim": 0}, 8, "hidden_dim must be positive"),
    ("sa_cnn", {"widths": (8, 0)}, 8, "widths must be positive"),
    ("sa_cnn", {"attention_stages": (5,)}, 8, "not stage indices"),
    ("sa_cnn", {"convs_per_stage": (1, 2, 3)}, 8, r"convs_per_stage \(1, 2, 3\) must be positive, "
                                                  r"with one count per stage \(2\)"),
    ("sa_cnn", {"convs_per_stage": 0}, 8, "convs_per_stage 0 must be positive"),
    ("sa_cnn", {"num_classes": 0}, 8, "num_classes must be positive, got 0"),
    ("sa_cnn", {"pool_position": "start"}, 8, "unknown pool_position 'start'"),
])
def test_bad_configuration(name, overrides, image, message):
  model = models.get_model(name, "tiny", **overrides)
  with pytest.raises(ValueError, match=message):
    models.init_variables(model, jax.random.key(0), (image, image, 3))


def test_unknown_model_and_preset():
  with pytest.raises(ValueError, match="unknown model 'cnn'"):
    models.get_model("cnn")
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    models.get_model("vit", "huge")


def _init_params(model, image_shape=(32, 32, 3)):
  return train.create_state(model, optax.identity(), 0, image_shape).params


def test_create_state_compiles_the_eager_init_bits():
  """One compiled program (at -O1 on the CPU), the same state as running the init eagerly."""
  model, tx = models.get_model("sa_cnn", "tiny"), optax.adam(1e-3)
  compiled = train.create_state(model, tx, 7, (8, 8, 3), lookahead=True)
  eager = train.initial_state(model, tx, 7, (8, 8, 3), lookahead=True)
  chex.assert_trees_all_equal(compiled, eager)  # bit for bit
  assert compiled.slow["params"] and int(compiled.step) == 0


def test_torch_init_style_matches_pytorch_default_ranges():
  params = _init_params(models.get_model("vit"))
  query = params["encoder_block0"]["attention"]["query"]
  bound = 1 / 128 ** 0.5  # nn.Linear(128, 128): U(-1/sqrt(128), 1/sqrt(128)) for weight and bias
  for leaf in (query["kernel"], query["bias"]):
    assert float(jnp.max(jnp.abs(leaf))) <= bound and float(jnp.max(jnp.abs(leaf))) > 0.9 * bound
  flax_style = _init_params(models.get_model("vit", init_style="flax"))
  assert float(jnp.max(jnp.abs(flax_style["encoder_block0"]["attention"]["query"]["bias"]))) == 0
  tokens = params["class_token"]["class_token"]
  assert tokens.shape == (1, 1, 128) and 0.5 < float(jnp.std(params["pos_embedding"]["pos_embedding"])) < 1.5


def test_tuned_presets_stay_within_the_budget():
  for name, preset in (("sa_cnn", "tuned"), ("vit", "tuned"), ("vit", "tuned_conv")):
    count = models.count_params(models.param_shapes(models.get_model(name, preset), (32, 32, 3)))
    assert 400_000 < count <= 550_000, (name, preset, count)


def test_patch_embedding_is_the_strided_convolution():
  from jax_attn.vit import PatchEmbedding
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  for style in ("torch", "flax"):
    embed = PatchEmbedding(24, 8, init_style=style)
    variables = embed.init(jax.random.key(1), images)
    conv = nn.Conv(24, (8, 8), strides=(8, 8), padding="VALID")
    expected = conv.apply(variables, images)  # the token map [2, 4, 4, 24]
    np.testing.assert_allclose(embed.apply(variables, images), expected, rtol=1e-5, atol=1e-5)
  # Same initial values as the nn.Conv it replaces (Flax init style: same initialisers).
  conv_init = nn.Conv(24, (8, 8), strides=(8, 8)).init(jax.random.key(1), images)
  chex.assert_trees_all_close(PatchEmbedding(24, 8, init_style="flax").init(
      jax.random.key(1), images), conv_init)


@pytest.mark.parametrize("preset_overrides", [
    {"dropout_rate": 0.3},  # post-norm (seed layout)
    {"dropout_rate": 0.3, "norm_position": "pre"},
    {"dropout_rate": 0.3, "tokenizer": "conv", "stem_widths": (8,)},
])
def test_vit_class_token_only_last_block_is_exact(preset_overrides):
  """The last block computes only the class token unless weights are collected: same
  logits and gradients (dropout included) as the full computation."""
  model = models.get_model("vit", "tiny", depth=2, **preset_overrides)
  params = models.init_variables(model, jax.random.key(0), (8, 8, 3))["params"]
  images = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))

  def loss(p, collect):
    out = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.key(2)},
                      mutable=["intermediates"] if collect else False)
    logits = out[0] if collect else out
    return jnp.sum(jnp.sin(3 * logits)), logits

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (short, short_logits), short_grads = value_and_grad(params, False)
  (full, full_logits), full_grads = value_and_grad(params, True)
  np.testing.assert_allclose(short_logits, full_logits, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(short_grads, full_grads, rtol=1e-4, atol=1e-6)
  # The shortcut really skips work: the full path's jaxpr is larger.
  count = lambda collect: len(jax.make_jaxpr(lambda p: loss(p, collect))(params).eqns)  # noqa: E731
  assert count(False) != count(True)


def test_vit_conv_tokenizer():
  model = models.get_model("vit", "tiny", tokenizer="conv", stem_widths=(8, 12))
  variables = models.init_variables(model, jax.random.key(0), (16, 16, 3))
  stem = variables["params"]["conv_tokenizer"]
  assert stem["conv1"]["kernel"].shape == (3, 3, 3, 8)
  assert stem["conv3"]["kernel"].shape == (3, 3, 12, 16)  # the last layer gives hidden_dim
  assert "patch_embedding" not in variables["params"]
  # 16x16 halved three times: 2x2 = 4 tokens + the class token.
  assert variables["params"]["pos_embedding"]["pos_embedding"].shape == (1, 5, 16)
  logits = model.apply(variables, jnp.ones((2, 16, 16, 3)))
  chex.assert_shape(logits, (2, 10))
  with pytest.raises(ValueError, match="not divisible by the conv tokenizer's stride 8"):
    models.init_variables(model, jax.random.key(0), (12, 12, 3))
  with pytest.raises(ValueError, match="unknown tokenizer 'pixels'"):
    models.init_variables(models.get_model("vit", "tiny", tokenizer="pixels"),
                          jax.random.key(0), (8, 8, 3))


def test_sa_cnn_without_head_returns_the_feature_map_its_head_reads():
  """``head='none'`` (the ViT's ``cnn`` tokenizer) stops before the head: tuned_v2's
  max-linear head of that map gives the full model's logits."""
  from jax_attn.whitening import set_whitening
  model = models.get_model("sa_cnn", "tuned_v2")
  variables = jax.jit(models.init_variables, static_argnums=(0, 2))(  # jit: eager init is slow
      model, jax.random.key(0), (32, 32, 3))
  images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  variables = {**variables, "params": set_whitening(variables["params"], np.asarray(images))}
  features = jax.jit(model.clone(head="none").apply)(variables, images)
  assert features.shape == (8, 3, 3, 112)  # 32 -> 31 (whitening) -> 15 -> 7 -> 3
  assert float(jnp.max(jnp.abs(features))) > 0.1  # (with zero whitening filters all is 0)
  head = variables["params"]["head"]["kernel"]
  np.testing.assert_allclose(jax.jit(model.apply)(variables, images),
                             jnp.max(features, axis=(1, 2)) @ head / 9, rtol=1e-5, atol=1e-6)
