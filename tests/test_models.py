"""Both model families: the notebook's sizes, shapes, the SA-CNN's options, bad configurations."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jax_attn
from jax_attn import models
from jax_attn.models.checks import choices
from jax_attn.train import state as state_lib

import tiny


def test_notebook_parameter_counts_match_the_notebook():
  assert models.count_params(models.param_shapes(models.get_model("sa_cnn"), (32, 32, 3))) == 520_870
  assert models.count_params(models.param_shapes(models.get_model("vit"), (32, 32, 3))) == 497_930


class OutputShapeTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=("sa_cnn", "vit"), batch=(1, 5), size=(8, 16))
  def test_logits_shape(self, name, batch, size):
    model = tiny.model(name, num_classes=7)
    variables = models.init_variables(model, jax.random.key(0), (size, size, 3))
    images = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
    logits = self.variant(lambda v, x: model.apply(v, x))(variables, images)
    chex.assert_shape(logits, (batch, 7))
    chex.assert_tree_all_finite(logits)


def test_vit_dropout_only_when_training():
  model = tiny.model("vit")
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  a = model.apply(variables, x)
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert not jnp.allclose(a, b)


def test_vit_sows_attention_per_block_and_the_last_block_asks_with_the_class_token():
  model = tiny.model("vit", depth=2)
  x = jnp.ones((3, 8, 8, 3))
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  _, state = model.apply(variables, x, mutable=["intermediates"])
  weights = jax.tree.leaves(state["intermediates"])
  assert [w.shape for w in weights] == [(3, 2, 5, 5), (3, 2, 1, 5)]
  pooled = tiny.model("vit", depth=2, pooling="class_seq")  # reads every token's output
  _, state = pooled.apply(models.init_variables(pooled, jax.random.key(0), (8, 8, 3)), x,
                          mutable=["intermediates"])
  assert [w.shape for w in jax.tree.leaves(state["intermediates"])] == [(3, 2, 5, 5)] * 2


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_the_class_only_last_block_computes_the_full_blocks_class_token(norm_position):
  """The last block of a class-pooled ViT computes the class token alone: the logits of the
  full computation (its other tokens' outputs are never read)."""
  model = tiny.model("vit", depth=2, dropout_rate=0.0, norm_position=norm_position,
                     local_kernel=3)
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  variables["params"]["encoder_block1"]["local"]["conv"]["kernel"] += 0.3
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  block = model.apply(variables, images, method=lambda m, x: _full_last_block(m, x))
  np.testing.assert_allclose(model.apply(variables, images), block, rtol=1e-5, atol=1e-5)


def _full_last_block(vit, images):
  """The logits with the last block run on every token (the class token's output kept)."""
  seen = {}

  def keep_all(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and context.module.name == "encoder_block1":
      kwargs = {**kwargs, "class_only": False}
      out = next_fun(*args, **kwargs)
      seen["full"] = out
      return out[:, :1]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(keep_all):
    logits = vit(images)
  assert seen["full"].shape[1] == 5  # the block really ran on all 5 tokens
  return logits


def test_sa_cnn_batch_norm_pooling_variant():
  model = tiny.model("sa_cnn", norm="batch", pool_stages=(0,), head="gap_dense")
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  assert "batch_stats" in variables
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and "batch_stats" in updates


def test_sa_cnn_pool_position_moves_resolution_not_parameters():
  def build(**fields):
    model = tiny.model("sa_cnn", norm="batch", pool_stages=(0, 1), head="gap_dense", **fields)
    variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    convs = {k: v["__call__"][0].shape for k, v in state["intermediates"].items()
             if k.startswith("conv")}
    return jax.tree.map(jnp.shape, variables["params"]), convs

  end_params, end = build(convs_per_stage=(2, 2))
  first_params, first = build(convs_per_stage=(2, 2), pool_position="after_first_conv")
  assert end_params == first_params
  assert end["conv2"] == (2, 8, 8, 8) and first["conv2"] == (2, 4, 4, 8)  # later convs at 1/4
  mixed_params, _ = build(convs_per_stage=(2, 1))
  assert set(mixed_params) == {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "sa1", "sa2", "head"}


def test_sa_cnn_pool_before_first_norm_is_conv_pool_norm_activation():
  """airbench's order: batch norm standardises the pooled conv output (its batch statistics are
  the pooled map's), the activation follows."""
  model = tiny.model("sa_cnn", widths=(8,), convs_per_stage=(1,), attention_stages=(),
                     norm="batch", pool_stages=(0,), bn_scale=False, head="gap_dense",
                     pool_position="before_first_norm")
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 3))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  _, state = model.apply(variables, x, train=True, capture_intermediates=True,
                         mutable=["intermediates", "batch_stats"])
  taps = {k: v["__call__"][0] for k, v in state["intermediates"].items() if k in ("conv1", "bn1")}
  pooled = nn.max_pool(taps["conv1"], (2, 2), strides=(2, 2))
  mean, var = pooled.mean(axis=(0, 1, 2)), pooled.var(axis=(0, 1, 2))
  expected = (pooled - mean) / jnp.sqrt(var + 1e-5) + variables["params"]["bn1"]["bias"]
  assert taps["bn1"].shape == (4, 4, 4, 8)
  np.testing.assert_allclose(taps["bn1"], expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"], 0.1 * mean, rtol=1e-4,
                             atol=1e-6)  # momentum 0.9


def test_sa_cnn_residual_shortcut_around_the_same_width_conv():
  """One stage of two convs: only the second (8 -> 8 channels) gets the shortcut. With that
  conv switched off (zero kernel, batch-norm bias -1: ReLU gives 0) the residual model's
  features are the first conv's, the plain model's are zero."""
  def build(residual):
    return tiny.model("sa_cnn", widths=(8,), convs_per_stage=(2,), norm="batch",
                      attention_stages=(), head="gap_dense", residual=residual)
  plain, residual = build(False), build(True)
  variables = models.init_variables(residual, jax.random.key(0), (8, 8, 3))
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


@pytest.mark.parametrize("name, fields, image, message", [
    ("vit", {"patch_size": 5}, 16, "16x16 is not divisible by the patch tokenizer's stride 5"),
    ("vit", {"num_heads": 3}, 8, "num_heads=3 does not divide hidden_dim=16"),
    ("vit", {"hidden_dim": 0}, 8, "hidden_dim must be positive"),
    ("vit", {"tokenizer": "pixels"}, 8, "unknown tokenizer 'pixels': use one of 'patch', 'cct', "
                                        "'airbench'"),
    ("vit", {"tokenizer": "airbench", "stem_convs": (2, 1, 1)}, 16,
     r"stem_convs \(2, 1, 1\) must hold one positive count per stage of stem_widths \+ "
     r"hidden_dim \(2\)"),
    ("vit", {"tokenizer": "airbench"}, 4, "image size 4x4 leaves no tokens after the airbench"),
    ("vit", {"tokenizer": "cct", "stem_widths": (8, 12)}, 12, "not divisible by the cct "
                                                             "tokenizer's stride 8"),
    ("vit", {"local_kernel": 2}, 8, r"local_kernel must be 0 \(off\) or an odd size, got 2"),
    ("sa_cnn", {"widths": (8, 0)}, 8, "widths must be positive"),
    ("sa_cnn", {"attention_stages": (5,)}, 8, "not stage indices"),
    ("sa_cnn", {"convs_per_stage": (1, 2, 3)}, 8, r"convs_per_stage \(1, 2, 3\) must hold one "
                                                  r"positive count per stage of widths \(2\)"),
    ("sa_cnn", {"convs_per_stage": (0, 1)}, 8, r"convs_per_stage \(0, 1\) must hold one positive"),
    ("sa_cnn", {"num_classes": 0}, 8, "num_classes must be positive, got 0"),
    ("sa_cnn", {"pool_position": "start"}, 8, "unknown pool_position 'start'"),
    ("sa_cnn", {"widths": (4, 8)}, 8, "SelfAttention2D needs at least 8 channels"),
])
def test_bad_configuration(name, fields, image, message):
  model = tiny.model(name, **fields)
  with pytest.raises(ValueError, match=message):
    models.init_variables(model, jax.random.key(0), (image, image, 3))


def test_every_literal_field_is_a_checked_choice():
  """A choice is declared once, by its annotation: the models check exactly those."""
  assert choices(models.MODELS["sa_cnn"])["head"] == ("conv_gap", "gap_dense", "max_linear")
  assert choices(models.MODELS["vit"])["pooling"] == ("class", "class_seq")
  for name, model_class in models.MODELS.items():
    for field in choices(model_class):
      with pytest.raises(ValueError, match=f"unknown {field} 'bogus'"):
        models.init_variables(tiny.model(name, **{field: "bogus"}), jax.random.key(0), (8, 8, 3))


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model 'cnn'"):
    models.get_model("cnn")


def test_create_state_compiles_the_eager_init_bits():
  """One compiled program, the same state as running the init eagerly (bit for bit with
  XLA's optimisations on; the tests turn LLVM's off, which moves the last bit)."""
  model, tx = tiny.model("sa_cnn"), optax.adam(1e-3)
  compiled = state_lib.create_state(model, tx, 7, (8, 8, 3), lookahead=True)
  eager = state_lib.initial_state(model, tx, 7, (8, 8, 3), lookahead=True)
  chex.assert_trees_all_close(compiled, eager, rtol=1e-6, atol=1e-7)
  assert compiled.slow["params"] and int(compiled.step) == 0


@pytest.mark.parametrize("name, layer, fan_in", [
    ("sa_cnn", ("sa4", "query"), 256),  # nn.Conv2d(256, 32, 1)
    ("vit", ("encoder_block0", "attention", "query"), 128),  # nn.Linear(128, 128)
    ("vit", ("encoder_block0", "mlp", "dense2"), 256)])  # nn.Linear(256, 128)
def test_pytorch_init_draws_pytorchs_default_ranges_and_else_flaxs(name, layer, fan_in):
  """The notebook's networks start as in PyTorch: weight and bias U(+-1/sqrt(fan_in));
  ``pytorch_init=False``: Flax's lecun_normal weights and zero biases."""
  def params(pytorch_init):
    model = models.get_model(name, pytorch_init=pytorch_init)
    tree = jax.jit(lambda: models.init_variables(model, jax.random.key(0), (32, 32, 3)))()
    tree = tree["params"]
    for key in layer:
      tree = tree[key]
    return tree
  bound = fan_in ** -0.5
  for leaf in params(True).values():
    assert 0.9 * bound < float(jnp.max(jnp.abs(leaf))) <= bound
  flax_style = params(False)
  assert float(jnp.max(jnp.abs(flax_style["bias"]))) == 0
  assert 0.7 < float(jnp.std(flax_style["kernel"])) / bound < 1.1


def test_the_vits_tokens_start_as_the_notebooks_randn():
  model = models.get_model("vit")
  vit = jax.jit(lambda: models.init_variables(model, jax.random.key(0), (32, 32, 3)))()["params"]
  assert vit["class_token"].shape == (1, 1, 128) and vit["pos_embedding"].shape == (1, 5, 128)
  assert 0.8 < float(jnp.std(vit["pos_embedding"])) < 1.2


def test_the_packaged_networks_stay_within_the_budget():
  for model, recipe in (("sa_cnn", "airbench"), ("sa_cnn", "airbench_noattn"),
                        ("vit", "conv_tokens")):
    config = jax_attn.get_recipe(model, recipe)
    count = models.count_params(models.param_shapes(models.get_model(config), (32, 32, 3)))
    assert 500_000 < count <= 550_000, (model, recipe, count)
