"""Input-pipeline benchmark: host batches -> devices -> on-device preprocessing, no model.

    python -m jax_attn.tools.data_bench [--batch_size=64] [--steps=2000] [--image_folder=DIR]

Prints images/sec for the reference normalisation and for crop+flip; the jitted
step returns the preprocessed batch (what a model would consume).
"""
from __future__ import annotations

import json
from typing import Any
import time

import jax
from absl import app, flags

from jax_attn import configs, data
from jax_attn.configs.default import SETTING
from jax_attn.data import augment, pipeline
from jax_attn.train.parallel import Parallel

_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Timed steps per configuration.")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "Read this image folder instead of synthetic data.")
_PARALLEL = flags.DEFINE_enum("parallel", "none", SETTING["parallel"].choices, "Device layout.")
_JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of a table.")

def augment_settings(**values: Any) -> Any:
  settings = configs.base("sa_cnn").augment
  settings.update(values)
  return settings


CONFIGS = {
    "reference normalisation": augment_settings(),
    "crop+flip": augment_settings(crop_padding=4, flip=True),
}


def measure(split: data.ArraySplit, parallel: Parallel, config: Any,
            steps: int) -> float:
  """Images/sec of feeding + preprocessing ``steps`` batches (after one warm-up batch)."""

  def body(key_data, batch, axis_name):
    del axis_name
    key = jax.random.wrap_key_data(key_data)
    # The no-op model: the preprocessed batch itself is the output, so nothing is elided.
    return augment.preprocess(batch["image"], config, key, batch["position"])

  step = parallel.wrap(body, donate_state=False)
  key_data = parallel.replicate(jax.random.key_data(jax.random.key(0)))

  def batches():
    epoch = 0
    while True:
      yield from pipeline.train_batches(split, seed=0, epoch=epoch,
                                              global_batch=parallel.global_batch)
      epoch += 1

  feed = pipeline.prefetch(batches(), parallel.put_batch)
  jax.block_until_ready(step(key_data, next(feed)))
  start = time.perf_counter()
  out = None
  for _, batch in zip(range(steps), feed):
    out = step(key_data, batch)
  jax.block_until_ready(out)
  return steps * parallel.global_batch / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
  del argv
  parallel = Parallel.create(_PARALLEL.value, _BATCH.value)
  if _IMAGE_FOLDER.value:
    split = data.ImageFolderSource(_IMAGE_FOLDER.value).load("train")
  else:
    split = data.SyntheticSource(50_000, 32).load("train")
  results = {name: measure(split, parallel, config, _STEPS.value)
             for name, config in CONFIGS.items()}
  if _JSON.value:
    print(json.dumps({"batch_size": _BATCH.value, "backend": jax.default_backend(),
                      "devices": parallel.num_devices, "images_per_sec": results}))
    return
  print(f"input pipeline, batch {_BATCH.value}, {parallel.num_devices} {jax.default_backend()} "
        f"device(s), --parallel={parallel.mode}")
  for name, rate in results.items():
    print(f"  {name:<26} {rate:>12,.0f} img/s")


if __name__ == "__main__":
  app.run(main)
