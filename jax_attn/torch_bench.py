"""The PyTorch side of the benchmark race: the notebook's loop, eager (as the notebook runs it)
or through ``torch.compile``."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from jax_attn.data import ArraySplit
from jax_attn.torch_reference import TorchSACNN, TorchViT


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
  """Adam 1e-3 + CrossEntropyLoss on the log-softmax outputs, like the notebook.

  Runs on CUDA when torch sees a GPU, as the notebook does (``device = 'cuda' if
  available``), with torch's default TF32 settings; every timed step ends in a host
  sync (``loss.item()``, the predictions copied back), as the notebook's loop does.
  """

  def __init__(self, name: str, batch_size: int, image_size: int, split: ArraySplit,
               compiled: bool = False):
    torch.manual_seed(0)
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = TorchSACNN() if name == "sa_cnn" else TorchViT(image=image_size)
    self.model = model.to(self.device)
    # torch.compile with static shapes (inductor): what a PyTorch user would race against
    self.forward = torch.compile(self.model, dynamic=False) if compiled else self.model
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
    self.loss = torch.nn.CrossEntropyLoss()
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
