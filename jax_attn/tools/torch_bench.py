"""The PyTorch side of the benchmark race: the notebook's loop with its networks, or airbench93's
network with its optimizer, eager or through ``torch.compile``."""
from __future__ import annotations

import functools
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from jax_attn.data import ArraySplit
from jax_attn.tools.torch_models import TorchAirbench93, TorchSACNN, TorchViT

# What races each (model, recipe): the network and its training, in PyTorch.
RIVALS = {("sa_cnn", "notebook"): "notebook", ("vit", "notebook"): "notebook",
          ("sa_cnn", "airbench"): "airbench93", ("sa_cnn", "airbench_noattn"): "airbench93"}


class _NotebookTransform(Dataset):
  """Per-image ToTensor + Normalize((0.5,)*3, (0.5,)*3), as the notebook's torchvision pipeline."""

  def __init__(self, split: ArraySplit):
    self.split = split

  def __len__(self) -> int:
    return len(self.split)

  def __getitem__(self, i: int):
    image = torch.from_numpy(self.split.images[i]).permute(2, 0, 1).float().div(255.0)
    return (image - 0.5) / 0.5, int(self.split.labels[i])


class TorchSide:
  """The notebook's networks with Adam 1e-3 and CrossEntropyLoss on their log-softmax
  outputs, or airbench93's network with SGD-Nesterov (momentum 0.85, weight decay) and label
  smoothing 0.2; ValueError for a (model, recipe) without a rival in ``RIVALS``.

  Runs on CUDA when torch sees a GPU, as the notebook does, with torch's default TF32
  settings; every timed step ends in a host sync (``loss.item()``), as the notebook's loop does.
  """

  def __init__(self, name: str, recipe: str, batch_size: int, image_size: int,
               split: ArraySplit, compiled: bool = False):
    rival = RIVALS.get((name, recipe))
    if rival is None:
      raise ValueError(f"no PyTorch rival for {name}/{recipe}: races exist for "
                       f"{', '.join('/'.join(k) for k in RIVALS)}")
    torch.manual_seed(0)
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if rival == "airbench93":
      model, self.loss = TorchAirbench93(), torch.nn.CrossEntropyLoss(label_smoothing=0.2)
      optimizer = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.85, nesterov=True,
                                    weight_decay=5e-4)
    else:
      model = TorchSACNN() if name == "sa_cnn" else TorchViT(image=image_size)
      self.loss, optimizer = torch.nn.CrossEntropyLoss(), functools.partial(torch.optim.Adam,
                                                                           lr=1e-3)
    self.model = model.to(self.device)
    # torch.compile with static shapes (inductor): what a PyTorch user would race against
    self.forward = torch.compile(self.model, dynamic=False) if compiled else self.model
    self.optimizer = optimizer([p for p in self.model.parameters() if p.requires_grad])
    self.split, self.batch_size = split, batch_size
    images = split.images[:batch_size].astype(np.float32) / 127.5 - 1.0
    self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(self.device)
    self.labels = torch.from_numpy(split.labels[:batch_size].astype(np.int64)).to(self.device)

  def _train_step(self, images, labels) -> None:
    self.model.train()
    self.optimizer.zero_grad()
    loss = self.loss(self.forward(images), labels)
    loss.backward()
    self.optimizer.step()
    loss.item()  # the notebook's running_loss sync

  def train_steps(self, n: int) -> list[float]:
    times = []
    for _ in range(n):
      start = time.perf_counter()
      self._train_step(self.images, self.labels)
      times.append(time.perf_counter() - start)
    return times

  def eval_steps(self, n: int) -> list[float]:
    self.model.eval()
    times = []
    with torch.no_grad():
      for _ in range(n):
        start = time.perf_counter()
        self.forward(self.images).argmax(1).cpu()
        times.append(time.perf_counter() - start)
    return times

  def epoch(self, examples: int) -> float:
    split = ArraySplit(self.split.images[:examples], self.split.labels[:examples],
                       self.split.class_names)
    loader = DataLoader(_NotebookTransform(split), batch_size=self.batch_size, shuffle=True,
                        drop_last=True)
    start = time.perf_counter()
    for images, labels in loader:
      self._train_step(images.to(self.device), labels.to(self.device))
    return time.perf_counter() - start
