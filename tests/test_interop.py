"""PyTorch weight import: the notebook's two architectures, written here in torch,
give the same logits as our Flax seed presets after ``from_torch``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attn import interop, models

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class TorchSelfAttention(nn.Module):
  """SAGAN layer with the notebook's parameter names."""

  def __init__(self, channels):
    super().__init__()
    self.query_convolution = nn.Conv2d(channels, channels // 8, 1)
    self.key_convolution = nn.Conv2d(channels, channels // 8, 1)
    self.value_convolution = nn.Conv2d(channels, channels, 1)
    self.gamma_parameter = nn.Parameter(torch.zeros(1))

  def forward(self, x):
    b, c, h, w = x.shape
    q = self.query_convolution(x).flatten(2).transpose(1, 2)   # b, hw, c/8
    k = self.key_convolution(x).flatten(2)                      # b, c/8, hw
    v = self.value_convolution(x).flatten(2)                    # b, c, hw
    attention = torch.softmax(q @ k, dim=-1)                    # b, hw(query), hw(key)
    out = (v @ attention.transpose(1, 2)).view(b, c, h, w)
    return self.gamma_parameter * out + x


class TorchSACNN(nn.Module):

  def __init__(self):
    super().__init__()
    widths = [3, 32, 64, 128, 256]
    for i in range(4):
      setattr(self, f"convolution{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 3, padding=1))
      setattr(self, f"sa{i + 1}", TorchSelfAttention(widths[i + 1]))
    self.convolution5 = nn.Conv2d(256, 10, 3, padding=1)

  def forward(self, x):
    for i in range(1, 5):
      x = getattr(self, f"sa{i}")(F.relu(getattr(self, f"convolution{i}")(x)))
    x = F.relu(self.convolution5(x)).mean(dim=(2, 3))
    return F.log_softmax(x, dim=-1)


class TorchMHSA(nn.Module):

  def __init__(self, dim, heads):
    super().__init__()
    self.heads, self.head_dim = heads, dim // heads
    self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.fc_out = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    split = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    attention = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim, dim=-1)
    return self.fc_out((attention @ v).transpose(1, 2).reshape(b, n, d))


class TorchBlock(nn.Module):

  def __init__(self, dim, heads, mlp_dim):
    super().__init__()
    self.self_attention = TorchMHSA(dim, heads)
    self.feed_forward = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
    self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.dropout = nn.Dropout(0.1)

  def forward(self, x):
    x = self.norm1(x + self.dropout(self.self_attention(x)))
    return self.norm2(x + self.dropout(self.feed_forward(x)))


class TorchViT(nn.Module):

  def __init__(self, image=32, patch=16, dim=128, heads=8, mlp_dim=256, depth=3):
    super().__init__()
    self.patch_embedding = nn.Conv2d(3, dim, patch, stride=patch)
    self.positional_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim))
    self.dropout = nn.Dropout(0.1)
    self.transformer_encoder_blocks = nn.ModuleList(
        [TorchBlock(dim, heads, mlp_dim) for _ in range(depth)])
    self.class_token = nn.Parameter(torch.randn(1, 1, dim))
    self.fc = nn.Linear(dim, 10)

  def forward(self, x):
    x = self.patch_embedding(x).flatten(2).transpose(1, 2)
    x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.dropout(x + self.positional_embedding)
    for block in self.transformer_encoder_blocks:
      x = block(x)
    return F.log_softmax(self.fc(x[:, 0]), dim=-1)


def _compare(torch_model, name, image_size):
  torch.manual_seed(0)
  torch_model.eval()
  images = torch.randn(4, 3, image_size, image_size)
  with torch.no_grad():
    expected = torch_model(images).numpy()
  params = interop.from_torch(torch_model.state_dict(), name)
  model = models.get_model(name)
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
    interop.from_torch(state, "sa_cnn")
  message = str(info.value)
  assert "missing keys ['sa2.gamma_parameter']" in message
  assert "unexpected keys ['extra.weight']" in message
  assert "convolution1.bias: (7,)" in message
  with pytest.raises(ValueError, match="unknown model"):
    interop.from_torch(state, "resnet")
