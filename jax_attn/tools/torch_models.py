"""The PyTorch rivals: the notebook's two networks (with its parameter names) and airbench93's.

Used by the weight-import tests and by the benchmark race (``bench --against=torch``).
Importing this module needs torch (``pip install torch==2.13.0``).
"""
import torch
from torch import nn
from torch.nn import functional as F


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


class _Conv(nn.Conv2d):
  """airbench's conv: no bias unless asked (zero), the first in_channels filters dirac."""

  def __init__(self, channels_in, channels_out, kernel_size=3, padding="same", bias=False):
    super().__init__(channels_in, channels_out, kernel_size, padding=padding, bias=bias)
    if self.bias is not None:
      self.bias.data.zero_()
    torch.nn.init.dirac_(self.weight.data[:self.weight.size(1)])


class _BatchNorm(nn.BatchNorm2d):
  """airbench's batch norm: eps 1e-12, the scale frozen at 1."""

  def __init__(self, features, momentum=0.6):
    super().__init__(features, eps=1e-12, momentum=1 - momentum)
    self.weight.requires_grad = False


class _ConvGroup(nn.Module):
  """conv -> 2x2 max-pool -> batch norm -> GELU -> conv -> batch norm -> GELU."""

  def __init__(self, channels_in, channels_out):
    super().__init__()
    self.conv1, self.norm1 = _Conv(channels_in, channels_out), _BatchNorm(channels_out)
    self.conv2, self.norm2 = _Conv(channels_out, channels_out), _BatchNorm(channels_out)

  def forward(self, x):
    x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
    return F.gelu(self.norm2(self.conv2(x)))


class TorchAirbench93(nn.Module):
  """airbench93's network (KellerJordan/cifar10-airbench, ``lib_airbench93.make_net93``): a
  frozen 2x2 whitening conv to 24 channels and GELU, three conv groups of 64, 128 and 128
  channels, a 3x3 max-pool, a linear layer without bias, times 1/9. Float32 here."""

  def __init__(self, widths=(64, 128, 128), classes=10):
    super().__init__()
    self.whiten = _Conv(3, 24, kernel_size=2, padding=0, bias=True)
    self.whiten.weight.requires_grad = False
    channels = (24,) + tuple(widths)
    self.groups = nn.Sequential(*[_ConvGroup(a, b) for a, b in zip(channels, channels[1:])])
    self.head = nn.Linear(widths[-1], classes, bias=False)

  def forward(self, x):
    x = self.groups(F.gelu(self.whiten(x)))
    return self.head(F.max_pool2d(x, 3).flatten(1)) / 9
