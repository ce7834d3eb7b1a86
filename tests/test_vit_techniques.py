"""The tuned ViTs' techniques do what their settings say: the layout of the tuned recipes
(class token beside sequence pooling, airbench's trunk as tokenizer) and local mixing."""
import jax
import numpy as np
import pytest

from jax_attn import config as config_lib, models
from jax_attn.vit import LocalMixing, SequencePool, ViT


@pytest.mark.parametrize("recipe", ["tuned_v2", "tuned_v3", "tuned_v4", "tuned_v5"])
def test_tuned_vit_is_a_vit_with_sequence_pooling_beside_the_class_token(recipe):
  config = config_lib.resolve("vit", recipe, {"data.image_size": 32})
  model = config_lib.build_model(config)
  shapes = models.param_shapes(model, (32, 32, 3))
  count = models.count_params(shapes)
  encoder = sum(models.count_params(v) for k, v in shapes.items() if k.startswith("encoder_block"))
  assert count <= 550_000 and encoder / count >= 0.5 and "class_token" in shapes
  assert shapes["head"]["kernel"].shape == (2 * 128, 10)  # class token beside the pooled tokens
  local = [v["local"]["conv"]["kernel"].shape for k, v in shapes.items()
           if k.startswith("encoder_block") and "local" in v]
  kernel = {"tuned_v4": 3, "tuned_v5": 5}.get(recipe)
  assert local == ([(kernel, kernel, 1, 128)] * 4 if kernel else [])
  if recipe in ("tuned_v3", "tuned_v4", "tuned_v5"):  # airbench's trunk: whitening, 3 convs, BN without scale, 7x7 tokens
    trunk = shapes["cnn_tokenizer"]["trunk"]
    assert trunk["stem"]["whiten"]["kernel"].shape == (2, 2, 3, 24)
    assert [trunk[f"conv{i}"]["kernel"].shape for i in (1, 2, 3)] == [
        (3, 3, 24, 64), (3, 3, 64, 64), (3, 3, 64, 128)]
    assert [sorted(trunk[f"bn{i}"]) for i in (1, 2, 3)] == [["bias"]] * 3
    assert shapes["pos_embedding"]["pos_embedding"].shape == (1, 7 * 7 + 1, 128)
  tokens = jax.random.normal(jax.random.key(0), (2, 5, 4))
  pool = SequencePool()
  params = pool.init(jax.random.key(1), tokens)
  scores = tokens @ params["params"]["score"]["kernel"] + params["params"]["score"]["bias"]
  weights = jax.nn.softmax(scores, axis=1)
  np.testing.assert_allclose(pool.apply(params, tokens), (weights * tokens).sum(1), rtol=1e-5)


def test_local_mixing_convolves_the_token_grid_row_major_after_the_class_token():
  tokens = jax.random.normal(jax.random.key(0), (2, 1 + 2 * 3, 4))  # class token + a 2x3 grid
  mixing = LocalMixing(3)
  params = mixing.init(jax.random.key(1), tokens, (2, 3))
  np.testing.assert_array_equal(mixing.apply(params, tokens, (2, 3)), 0.0)  # zero-initialised
  kernel = np.zeros((3, 3, 1, 4), np.float32)
  kernel[0, 1] = 1.0  # each position takes the token one row above it (zero padding)
  bias = np.arange(4, dtype=np.float32)
  out = mixing.apply({"params": {"conv": {"kernel": kernel, "bias": bias}}}, tokens, (2, 3))
  grid = np.asarray(tokens[:, 1:]).reshape(2, 2, 3, 4)
  expected = np.concatenate([np.zeros((2, 1, 3, 4)), grid[:, :1]], axis=1) + bias
  np.testing.assert_allclose(out[:, 1:].reshape(2, 2, 3, 4), expected, rtol=1e-6)
  np.testing.assert_array_equal(out[:, 0], 0.0)


@pytest.mark.parametrize("pooling, norm_position", [
    ("class_seq", "pre"), ("class", "pre"), ("class", "post")])
def test_a_vit_with_local_mixing_starts_as_one_without_and_then_uses_it(pooling, norm_position):
  """Zero-initialised: the logits equal those of the same ViT without it; every block holds its
  parameters (also the last, which computes only the class token with class pooling), they
  change the logits once non-zero, and attention maps can still be collected."""
  images = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  base = dict(tokenizer="cnn", stem_widths=(8,), hidden_dim=16, num_heads=2, mlp_dim=16,
              depth=2, dropout_rate=0.0, norm_position=norm_position, pooling=pooling)
  with_local, without_local = ViT(**base, local_kernel=3), ViT(**base)
  variables = models.init_variables(with_local, jax.random.key(3), (16, 16, 3))
  without = jax.tree.map(lambda x: x, variables)  # a copy
  for i in range(2):
    assert variables["params"][f"encoder_block{i}"]["local"]["conv"]["kernel"].shape == (3, 3, 1, 16)
    del without["params"][f"encoder_block{i}"]["local"]
  np.testing.assert_array_equal(with_local.apply(variables, images),
                                without_local.apply(without, images))
  for i in range(2):
    variables["params"][f"encoder_block{i}"]["local"]["conv"]["kernel"] += 0.5
  assert not np.allclose(with_local.apply(variables, images), without_local.apply(without, images))
  logits, state = with_local.apply(variables, images, mutable=["intermediates"])
  assert logits.shape == (2, 10) and state["intermediates"]
