"""The conv_tokens ViT's techniques do what their settings say: the class token beside
sequence pooling, airbench's trunk as the tokenizer, and local mixing."""
import jax
import numpy as np
import pytest

from jax_attn import configs, models
from jax_attn.models.vit import LocalMixing, ViT


@pytest.mark.parametrize("local_kernel", [0, 3, 5])
def test_conv_tokens_vit_has_sequence_pooling_beside_the_class_token(local_kernel):
  config = configs.get_recipe("vit", "conv_tokens", image_size=32,
                              **{"model.local_kernel": local_kernel})
  model = models.get_model(config)
  shapes = models.param_shapes(model, (32, 32, 3))
  count = models.count_params(shapes)
  encoder = sum(models.count_params(v) for k, v in shapes.items() if k.startswith("encoder_block"))
  assert count <= 550_000 and encoder / count >= 0.5 and "class_token" in shapes
  assert shapes["head"]["kernel"].shape == (2 * 128, 10)  # class token beside the pooled tokens
  local = [v["local"]["conv"]["kernel"].shape for k, v in shapes.items()
           if k.startswith("encoder_block") and "local" in v]
  kernel = local_kernel
  assert local == ([(kernel, kernel, 1, 128)] * 4 if kernel else [])
  # airbench's trunk: whitening, 3 convs, batch norm without scale, 7x7 tokens
  trunk = shapes["airbench_tokenizer"]
  assert trunk["stem"]["whiten"]["kernel"].shape == (2, 2, 3, 24)
  assert [trunk[f"conv{i}"]["kernel"].shape for i in (1, 2, 3)] == [
      (3, 3, 24, 64), (3, 3, 64, 64), (3, 3, 64, 128)]
  assert [sorted(trunk[f"bn{i}"]) for i in (1, 2, 3)] == [["bias"]] * 3
  assert shapes["pos_embedding"].shape == (1, 7 * 7 + 1, 128)


def test_sequence_pooling_is_a_softmax_weighted_mean_beside_the_class_token():
  """The head reads the class token beside the tokens weighted by a softmax over a learned
  score of each (CCT's sequence pooling)."""
  model = ViT(patch_size=4, hidden_dim=16, num_heads=2, mlp_dim=16, depth=1, dropout_rate=0.0,
              norm_position="pre", pooling="class_seq")
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = models.init_variables(model, jax.random.key(1), (8, 8, 3))
  logits, state = model.apply(variables, images, capture_intermediates=True,
                              mutable=["intermediates"])
  x = state["intermediates"]["encoder_norm"]["__call__"][0]  # [2, 1 + 4 tokens, 16]
  params = variables["params"]
  scores = x[:, 1:] @ params["sequence_pool"]["kernel"] + params["sequence_pool"]["bias"]
  pooled = (jax.nn.softmax(scores, axis=1) * x[:, 1:]).sum(1)
  expected = np.concatenate([x[:, 0], pooled], -1) @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


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
    ("class_seq", "pre"), ("class", "pre"),
    pytest.param("class", "post", marks=pytest.mark.slow)])  # compiles a third ViT
def test_a_vit_with_local_mixing_starts_as_one_without_and_then_uses_it(pooling, norm_position):
  """Zero-initialised: the logits equal those of the same ViT without it; every block holds its
  parameters (also the last, which computes only the class token with class pooling), they
  change the logits once non-zero, and attention maps can still be collected."""
  images = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  base = dict(tokenizer="airbench", stem_widths=(8,), hidden_dim=16, num_heads=2, mlp_dim=16,
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
