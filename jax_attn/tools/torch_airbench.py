"""The PyTorch side of the whole-run race: airbench93's network trained as an SA-CNN recipe says.

    python -m jax_attn.tools.torch_airbench --image_folder=../shared/data/cifar10-jpeg [--seed=0]
        [--recipe=airbench_noattn] [--epochs=N] [--batch_size=B] [--threads=2]

Written from airbench93's public description (KellerJordan/cifar10-airbench,
``lib_airbench93.py``): every setting comes from the packaged recipe (default
``airbench_noattn``, airbench93's network), so both frameworks train one network one way on one
data split: whitening filters from the first 5,000 training images (``whitening_kernel``),
SGD-Nesterov with coupled L2, batch-norm biases at ``bias_lr_scale`` x the rate, the whitening
bias trained for ``whiten_bias_epochs``, the learning-rate schedule of ``optim.make_schedule``,
label smoothing, reflect-padded random translations, alternating flips, the lookahead of
``state.Lookahead`` and an evaluation with the recipe's test-time views every epoch. Prints
one JSON line: wall time (data on the host, evaluation included), images/s, accuracy.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags

from jax_attn import configs, data
from jax_attn.data import augment
from jax_attn.models import whitening
from jax_attn.tools.torch_models import TorchAirbench93
from jax_attn.train import optim

def _nchw(x: Any) -> torch.Tensor:
  """``[N, H, W, C]`` (numpy or JAX) -> a float32 torch ``[N, C, H, W]``."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
  """Each image a uniformly random window of its reflect-padded self (airbench's batch_crop)."""
  padded = F.pad(x, (pad,) * 4, mode="reflect")
  dy, dx = torch.randint(0, 2 * pad + 1, (2, len(x)), generator=generator)
  out = torch.empty_like(x)
  height, width = x.shape[2:]
  for oy in range(2 * pad + 1):
    for ox in range(2 * pad + 1):
      mask = (dy == oy) & (dx == ox)
      out[mask] = padded[mask, :, oy:oy + height, ox:ox + width]
  return out


def _state(model: torch.nn.Module) -> list[torch.Tensor]:
  """The tensors the lookahead averages: parameters and batch-norm running statistics."""
  return [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]


def train_and_evaluate(config: Any, train: data.ArraySplit, evaluation: data.ArraySplit,
                       seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains airbench93's network as ``config`` says; the summary of the run."""
  start = time.perf_counter()
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  model = TorchAirbench93(widths=tuple(config.model.widths), classes=config.num_classes)
  for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
    norm.momentum = 1 - config.model.bn_momentum
  normalised = np.asarray(augment.normalize(train.images, config.augment.normalization))
  images, labels = _nchw(normalised), torch.from_numpy(train.labels.astype(np.int64))
  kernel = whitening.whitening_kernel(normalised[:5000])
  model.whiten.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())

  steps_per_epoch = len(train) // config.batch_size
  total = steps_per_epoch * config.epochs
  rates = np.asarray(optim.make_schedule(config, steps_per_epoch)(np.arange(total)), np.float64)
  whiten_steps = round(config.whiten_bias_epochs * steps_per_epoch)
  bn_biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  taken = {id(p) for p in [*bn_biases, model.whiten.bias]}
  rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
  decay, scale = config.weight_decay, config.bias_lr_scale
  groups = [{"params": rest, "weight_decay": decay, "factor": 1.0},
            {"params": bn_biases, "weight_decay": decay / scale, "factor": scale},
            {"params": [model.whiten.bias], "weight_decay": decay, "factor": 1.0,
             "until": whiten_steps}]
  optimizer = torch.optim.SGD(groups, lr=0.0, momentum=config.momentum, nesterov=True)
  every, slow = config.lookahead_every_steps, [t.detach().clone() for t in _state(model)]

  base_flips = torch.rand(len(train), generator=generator) < 0.5  # alternating: one coin each
  step, history, train_s = 0, [], 0.0
  for epoch in range(config.epochs):
    epoch_start = time.perf_counter()
    model.train()
    order = torch.randperm(len(train), generator=generator)
    for i in range(steps_per_epoch):
      index = order[i * config.batch_size:(i + 1) * config.batch_size]
      x = images[index]
      if config.augment.crop_padding:
        x = _crop(x, config.augment.crop_padding, generator)
      if config.augment.flip:
        flips = (base_flips[index] ^ bool(epoch % 2) if config.augment.alternating_flip
                 else torch.rand(len(index), generator=generator) < 0.5)
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)
      for group in optimizer.param_groups:
        group["lr"] = rates[step] * group["factor"] if step < group.get("until", total) else 0.0
      loss = F.cross_entropy(model(x), labels[index], label_smoothing=config.label_smoothing)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      step += 1
      if every and (step % every == 0 or step >= total):
        rho = 1.0 if step >= total else config.lookahead_decay ** every * (step / total) ** 3
        with torch.no_grad():
          for s, fast in zip(slow, _state(model)):
            s.mul_(rho).add_(fast, alpha=1 - rho)
            fast.copy_(s)
    train_s += time.perf_counter() - epoch_start
    accuracy = evaluate(model, config, evaluation)
    history.append({"epoch": epoch + 1, "loss": loss.item(), "eval_accuracy": accuracy})
    log(json.dumps(history[-1]))
  wall = time.perf_counter() - start
  return {"framework": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
          "recipe": config.recipe, "seed": seed, "epochs": config.epochs, "steps": total,
          "wall_s": round(wall, 1), "train_s": round(train_s, 1),
          "images_per_s": round(total * config.batch_size / wall, 1),
          "eval_accuracy": history[-1]["eval_accuracy"], "history": history,
          "learning_rates": rates.tolist()}


def evaluate(model: torch.nn.Module, config: Any, evaluation: data.ArraySplit,
             batch_size: int = 1000) -> float:
  """Accuracy with the recipe's test-time views (``augment.tta_logits``, the JAX side's)."""
  model.eval()
  apply = lambda x: model(_nchw(x)).numpy()  # noqa: E731  (NHWC views in, logits out)
  correct = 0
  with torch.no_grad():
    for start in range(0, len(evaluation), batch_size):
      images = augment.normalize(evaluation.images[start:start + batch_size],
                                 config.augment.normalization)
      logits, _ = augment.tta_logits(apply, images, flip=config.eval_flip,
                                     shift=config.eval_translate)
      labels = evaluation.labels[start:start + batch_size]
      correct += int((np.argmax(logits, axis=1) == labels).sum())
  return correct / len(evaluation)


def main(argv: list[str]) -> None:
  """The command line (its flags are defined under ``__main__``: importing this module beside
  ``bench``, whose flags share names, defines none)."""
  del argv
  torch.set_num_threads(FLAGS.threads)
  config = configs.get_recipe("sa_cnn", FLAGS.recipe, **{
      path: FLAGS[name].value for name, path in _OVERRIDES.items()
      if FLAGS[name].value is not None})
  train, evaluation, *_ = data.load_train_eval(config)
  summary = train_and_evaluate(config, train, evaluation, FLAGS.seed)
  print(json.dumps({k: v for k, v in summary.items() if k != "learning_rates"}))


# main's flags of the same names set these settings: a run of the same data and length.
FLAGS = flags.FLAGS
_OVERRIDES = {"epochs": "epochs", "batch_size": "batch_size", "image_folder": "data.image_folder",
              "synthetic": "data.synthetic", "synthetic_size": "data.synthetic_size"}


if __name__ == "__main__":
  flags.DEFINE_string("recipe", "airbench_noattn", "Packaged SA-CNN recipe to follow.")
  flags.DEFINE_integer("seed", 0, "Seed of the initialisation, order and augmentation.")
  flags.DEFINE_integer("threads", os.cpu_count(), "torch CPU threads.")
  flags.DEFINE_integer("epochs", None, "Epochs (default: the recipe's).")
  flags.DEFINE_integer("batch_size", None, "Batch size (default: the recipe's).")
  flags.DEFINE_string("image_folder", None, "PATH/<split>/<class>/*.jpg, as main's.")
  flags.DEFINE_bool("synthetic", None, "Synthetic data (smoke runs).")
  flags.DEFINE_integer("synthetic_size", None, "Synthetic training examples.")
  app.run(main)
