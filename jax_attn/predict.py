"""Top-k classes of image files, by a trained run (and, optionally, its attention over them).

    python -m jax_attn.predict --workdir=runs/vit_seed cat.jpg dog.png [--top_k=3]
        [--attention_map=att.png] [--json] [--flip | --noflip]

Loads the run's config.json and newest checkpoint (writing nothing), decodes each file (any
format Pillow reads; grayscale and RGBA become RGB), resizes it to the run's image size
the way ``--image_folder`` data is resized (bilinear, aspect ratio not kept), normalises
it as in training and prints one line per image, e.g.
``cat.jpg: cat 91.2 %, dog 5.1 %, frog 1.0 %`` (``--json``: one JSON object per line).
A line on stderr says which checkpoint answered, at what size and whether with flip TTA.

Flip test-time augmentation (mean logits of each image and its mirror image) follows the
run's ``eval_flip``, so predictions match how its accuracy was measured; ``--flip`` /
``--noflip`` override it.

Class names: config.json does not store them, so they are those of the run's data source
when it can still tell: the class folders of an ``--image_folder`` run (if the folder is
still there with the run's number of classes), CIFAR-10's ten names for a run on tfds
``cifar10`` (the default) or ``--cifar_archive`` with 10 classes; otherwise ``class N``
(synthetic data, other tfds datasets, a moved folder).

``--attention_map=OUT.png`` draws the model's attention over each image with the report's
drawing code (``report.draw_attention``): one PNG per image, ``OUT.png`` for one image and
``OUT_0.png``, ``OUT_1.png``, ... (argument order) for several. The image drawn is the
resized one the model saw. A missing workdir, config.json or checkpoint, an unreadable
image or a model without attention layers for ``--attention_map``: one line on stderr
(``jax_attn.predict: error: ...``) and exit status 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

from jax_attn import config as config_lib, trained
from jax_attn.data.image_folder import _decode as decode_image  # the image-folder source's decode
from jax_attn.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a run of python -m jax_attn.main.")
_TOP_K = flags.DEFINE_integer("top_k", 3, "Classes to print per image (at most num_classes).")
_ATTENTION_MAP = flags.DEFINE_string(
    "attention_map", None, "Draw the attention over each image to this PNG (several images: "
    "OUT_0.png, OUT_1.png, ... in argument order).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per image instead of text.")
_FLIP = flags.DEFINE_bool(
    "flip", None, "Flip test-time augmentation (mean logits of image and mirror image); "
    "default: as the run evaluated (its eval_flip).")



def load_images(paths: list[str], size: int) -> np.ndarray:
  """uint8 ``[N, size, size, 3]``: each file decoded and resized as ``--image_folder`` data is."""
  images = []
  for path in paths:
    if not Path(path).is_file():
      raise UserError(f"image {path} does not exist or is not a file")
    images.append(decode_image(Path(path), size))
  return np.stack(images)


def map_paths(out: str, count: int) -> list[Path]:
  """``OUT.png`` for one image; ``OUT_0.png``, ``OUT_1.png``, ... for several."""
  path = Path(out)
  if count == 1:
    return [path]
  return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]


def predict(workdir: str, paths: list[str], top_k: int = 3, flip: bool | None = None,
            attention_map: str | None = None, log=lambda line: None) -> list[dict[str, Any]]:
  """Per image: ``{"image", "top_k": [{"class", "label", "probability"}, ...]}`` (most probable
  first), plus ``"attention_map"`` (the PNG written) with ``attention_map``."""
  if not paths:
    raise UserError("give one or more image files: python -m jax_attn.predict --workdir=RUN "
                    "IMAGE...")
  if top_k < 1:
    raise UserError(f"--top_k={top_k} must be at least 1")
  run = trained.load_trained(workdir)
  config = run.config
  images = load_images(paths, run.image_size)
  flip = config.eval_flip if flip is None else flip
  shift = config.eval_translate if flip or config.eval_flip is False else 0  # --noflip: plain
  logits, layers = trained.apply(run, images, flip=flip, shift=shift,
                                 attention=attention_map is not None)
  if attention_map is not None and not layers:
    raise UserError(f"the model of {workdir} has no attention layers "
                    f"({config_lib.describe(config)}): leave out --attention_map")
  log(f"{workdir}: {config_lib.describe(config)}, checkpoint at step {run.step}; images resized "
      f"to {run.image_size}x{run.image_size}; " + (
          "flip test-time augmentation (mean of image and mirror image)" if flip
          else "no flip test-time augmentation") + (f", views moved by +-{shift} px" if shift else ""))
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities = shifted / shifted.sum(-1, keepdims=True)
  names = trained.class_names(config)
  results = []
  for path, p in zip(paths, probabilities):
    best = np.argsort(-p, kind="stable")[:top_k]
    results.append({"image": path, "top_k": [
        {"class": names[i], "label": int(i), "probability": float(p[i])} for i in best]})
  if attention_map is not None:
    # Imported only to draw: it loads matplotlib, and its flags are defined after ours are parsed.
    from jax_attn import report  # pylint: disable=g-import-not-at-top
    for i, (result, out) in enumerate(zip(results, map_paths(attention_map, len(paths)))):
      out.parent.mkdir(parents=True, exist_ok=True)
      top = result["top_k"][0]
      report.draw_attention(config.model_name, images[i], [w[i] for w in layers], out,
                            title=f"{Path(result['image']).name}: {top['class']} "
                                  f"{top['probability']:.0%}")
      result["attention_map"] = str(out)
  return results


def format_line(result: dict[str, Any]) -> str:
  """``cat.jpg: cat 91.2 %, dog 5.1 %, frog 1.0 %``."""
  return f"{result['image']}: " + ", ".join(
      f"{c['class']} {100 * c['probability']:.1f} %" for c in result["top_k"])


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    if not _WORKDIR.value:
      raise UserError("give the run to use: --workdir=RUN (a directory written by "
                      "python -m jax_attn.main)")
    results = predict(_WORKDIR.value, argv[1:], _TOP_K.value, _FLIP.value, _ATTENTION_MAP.value,
                      log=lambda line: print(line, file=sys.stderr))
  except UserError as e:
    sys.stderr.write(f"jax_attn.predict: error: {e}\n")
    sys.exit(2)
  for result in results:
    print(json.dumps(result) if _JSON.value else format_line(result))
    if "attention_map" in result and not _JSON.value:
      print(f"wrote {result['attention_map']}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
