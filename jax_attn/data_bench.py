"""Input-pipeline benchmark: host batches -> devices -> on-device preprocessing, no model.

    python -m jax_attn.data_bench [--batch_size=64] [--steps=2000] [--image_folder=DIR]

Prints images/sec for the reference normalisation and for crop+flip; the jitted
step returns the preprocessed batch (what a model would consume).
"""
from __future__ import annotations

import json
from typing import Any
import time

import jax
from absl import app, flags

from jax_attn import augment, data, input_pipeline
from jax_attn import config as config_lib
from jax_attn.parallel import Parallel

_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Timed steps per configuration.")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "Read this image folder instead of synthetic data.")
_PARALLEL = flags.DEFINE_enum("parallel", "none", ["none", "pmap", "shard_map"], "Device layout.")
_JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of a table.")

CONFIGS = {
    "reference normalisation": config_lib.augment_config(),
    "crop+flip": config_lib.augment_config(crop_padding=4, flip=True),
    "crop+flip+cutout": config_lib.augment_config(crop_padding=4, flip=True, cutout=8),
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
      yield from input_pipeline.train_batches(split, seed=0, epoch=epoch,
                                              global_batch=parallel.global_batch)
      epoch += 1

  feed = input_pipeline.prefetch(batches(), parallel.put_batch)
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
