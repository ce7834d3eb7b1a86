"""The attention maps: which weights each panel shows, and how a panel is drawn."""
import numpy as np
from PIL import Image

from jax_attn import attention_maps


def _softmax_rows(shape, seed):
  x = np.random.default_rng(seed).normal(size=shape)
  return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def test_sa_cnn_panels_are_the_centre_and_corner_pixels_rows():
  layers = [_softmax_rows((1, 16, 16), 0), _softmax_rows((1, 4, 4), 1)]  # 4x4, then 2x2 maps
  panels = attention_maps.panels("sa_cnn", layers)
  assert [title for _, title, _ in panels] == ["SA1 centre", "SA1 corner", "SA2 centre",
                                                "SA2 corner"]
  np.testing.assert_array_equal(panels[0][0], layers[0][0, 2 * 4 + 2].reshape(4, 4))
  np.testing.assert_array_equal(panels[1][0], layers[0][0, 1 * 4 + 1].reshape(4, 4))
  assert panels[0][2] == (2, 2) and panels[3][2] == (0, 0)


def test_vit_panels_are_the_class_tokens_attention_and_the_rollout():
  """Two blocks over a 2x2 grid and the class token; the last one asks with the class token."""
  first, last = _softmax_rows((2, 5, 5), 2), _softmax_rows((2, 1, 5), 3)
  panels = attention_maps.panels("vit", [first, last])
  assert [title for _, title, _ in panels] == ["head 0", "head 1", "heads' mean", "rollout"]
  np.testing.assert_allclose(panels[1][0], last[1, 0, 1:].reshape(2, 2))
  np.testing.assert_allclose(panels[2][0], last.mean(0)[0, 1:].reshape(2, 2))
  a = 0.5 * first.mean(0) + 0.5 * np.eye(5)  # Abnar & Zuidema: residual-mixed, re-normalised
  b = 0.5 * last.mean(0)[0] + 0.5 * np.eye(5)[0]
  rollout = (b / b.sum()) @ (a / a.sum(-1, keepdims=True))
  np.testing.assert_allclose(panels[3][0], rollout[1:].reshape(2, 2), rtol=1e-6)


def test_a_panel_blends_the_heat_map_over_the_image(tmp_path):
  image = np.random.default_rng(4).integers(0, 256, (8, 8, 3)).astype(np.uint8)
  layers = [_softmax_rows((1, 16, 16), 5)]  # 4x4 positions: each covers 2x2 pixels
  attention_maps.draw("sa_cnn", image, layers, tmp_path / "maps.png", title="x")
  sheet = np.asarray(Image.open(tmp_path / "maps.png").convert("RGB"), np.float64)
  tile = 8 * 3
  assert sheet.shape == (tile + 14, 3 * (tile + 4), 3)  # the image, then SA1 centre and corner
  plain = sheet[14:, :tile]
  np.testing.assert_array_equal(plain[::3, ::3], image)  # each pixel drawn 3 x 3
  heat = layers[0][0, 10].reshape(4, 4)
  colour = attention_maps._colour(np.kron(heat / heat.max(), np.ones((2, 2))))
  centre = sheet[14:, tile + 4:2 * tile + 4][::3, ::3]  # away from the query cross (2, 2)
  expected = 0.45 * image + 0.55 * colour
  np.testing.assert_allclose(centre[:4, :4], np.floor(expected[:4, :4]), atol=1)
