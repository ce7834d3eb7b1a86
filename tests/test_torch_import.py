"""PyTorch weight import: the notebook's two networks, written here in torch, give the same
logits as ours after ``from_torch``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_attn

pytestmark = pytest.mark.slow  # full-size networks, compiled

torch = pytest.importorskip("torch")
from jax_attn.tools.torch_models import TorchSACNN, TorchViT  # noqa: E402  (needs torch)


def _compare(torch_model, name, image_size):
  torch.manual_seed(0)
  torch_model.eval()
  images = torch.randn(4, 3, image_size, image_size)
  with torch.no_grad():
    expected = torch_model(images).numpy()
  params = jax_attn.from_torch(torch_model.state_dict(), name)
  model = jax_attn.get_model(name)
  logits = model.apply({"params": params}, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  np.testing.assert_allclose(log_probs, expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(np.argmax(logits, -1), expected.argmax(-1))


def test_sa_cnn_matches_torch_with_nonzero_gamma():
  torch.manual_seed(1)
  net = TorchSACNN()
  with torch.no_grad():
    for i, gamma in enumerate([0.5, -0.3, 0.8, 0.2]):
      getattr(net, f"sa{i + 1}").gamma_parameter.fill_(gamma)
  _compare(net, "sa_cnn", 32)


@pytest.mark.parametrize("image_size", [32, 64])
def test_vit_matches_torch(image_size):
  torch.manual_seed(2)
  _compare(TorchViT(image=image_size), "vit", image_size)


def test_bad_state_dicts_are_listed():
  torch.manual_seed(3)
  state = TorchSACNN().state_dict()
  state["extra.weight"] = torch.zeros(1)
  del state["sa2.gamma_parameter"]
  state["convolution1.bias"] = torch.zeros(7)
  with pytest.raises(ValueError) as info:
    jax_attn.from_torch(state, "sa_cnn")
  message = str(info.value)
  assert "missing keys ['sa2.gamma_parameter']" in message
  assert "unexpected keys ['extra.weight']" in message
  assert "convolution1.bias: (7,)" in message
  with pytest.raises(ValueError, match="unknown model"):
    jax_attn.from_torch(state, "resnet")
