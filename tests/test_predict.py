"""python -m jax_attn.predict on two tiny synthetic runs (one per model, trained once)."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import jax_attn
from jax_attn import configs

from conftest import run_main, tiny

pytestmark = pytest.mark.slow  # starts processes or trains

SIZE = 8  # TINY trains on 8x8 synthetic images
LINE = re.compile(r"^(?P<image>.+?): (?P<entries>.+)$")
ENTRY = re.compile(r"^(?P<name>.+) (?P<percent>\d+\.\d) %$")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{"sa_cnn": workdir, "vit": workdir}; the ViT evaluated with flip TTA (--eval_flip) and
  checkpointed at steps 8, 12 and 16 (the newest answers)."""
  root = tmp_path_factory.mktemp("runs")
  workdirs = {}
  for model in ("sa_cnn", "vit"):
    workdirs[model] = root / model
    extra = ["--eval_flip", "--checkpoint_every_steps=4"] if model == "vit" else []
    run_main([*tiny(model), "--epochs=1", *extra, f"--workdir={workdirs[model]}"])
  return workdirs


@pytest.fixture
def images(tmp_path):
  """Files of other sizes and modes than the runs' 8x8 RGB: RGBA PNG, grayscale JPEG, RGB PNG."""
  rng = np.random.default_rng(0)
  files = [tmp_path / "rgba.png", tmp_path / "gray.jpg", tmp_path / "rgb.png"]
  Image.fromarray(rng.integers(0, 256, (13, 20, 4), dtype=np.uint8), "RGBA").save(files[0])
  Image.fromarray(rng.integers(0, 256, (40, 31), dtype=np.uint8), "L").save(files[1])
  Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB").save(files[2])
  return files


def run_predict(*args):
  return subprocess.run([sys.executable, "-m", "jax_attn.predict", *map(str, args)],
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def reference_probabilities(workdir, files, flip, step=None):
  """Softmax of the logits of the run's newest checkpoint (or ``step``'s), read here with orbax,
  on each file resized here with PIL and normalised here as the notebook does; the mean with
  the mirror image's logits under flip TTA."""
  config = configs.from_json(json.loads((workdir / "config.json").read_text()))
  assert config.augment.normalization == "reference" and not config.eval_translate
  manager = ocp.CheckpointManager(workdir / "checkpoints")
  params = manager.restore(step or max(manager.all_steps()))["state"]["params"]
  model = jax_attn.get_model(config)
  images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
                     for f in files])
  x = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
  logits = model.apply({"params": params}, x)
  if flip:
    logits = (logits + model.apply({"params": params}, x[:, :, ::-1])) / 2
  return np.asarray(jax.nn.softmax(logits, -1))


def assert_png(path, panels):
  """An attention-map sheet: the image and its ``panels`` heat maps side by side, each drawn
  over the image (its pixels differ from the plain image's)."""
  sheet = np.asarray(Image.open(path).convert("RGB"), np.int32)
  tile = SIZE * 3  # each image pixel is drawn 3 x 3, under a 14-pixel title
  assert sheet.shape == (tile + 14, (panels + 1) * (tile + 4), 3), (path, sheet.shape)
  tiles = [sheet[14:, i * (tile + 4):i * (tile + 4) + tile] for i in range(panels + 1)]
  assert all(np.abs(t - tiles[0]).sum() > 0 for t in tiles[1:]), path


def test_vit_prints_top_k_like_the_model_with_the_runs_flip_tta(runs, images, tmp_path):
  result = run_predict(f"--workdir={runs['vit']}", *images,
                       f"--attention_map={tmp_path / 'att.png'}")
  assert result.returncode == 0, result.stderr
  assert "checkpoint at step 16;" in result.stderr and "test-time views: flip" in result.stderr
  assert ocp.CheckpointManager(runs["vit"] / "checkpoints").all_steps() == [8, 12, 16]
  lines = result.stdout.splitlines()
  assert len(lines) == len(images)
  expected = reference_probabilities(runs["vit"], images, flip=True)
  for line, file, probabilities in zip(lines, images, expected):
    match = LINE.match(line)
    assert match and match["image"] == str(file), line
    entries = [ENTRY.match(e) for e in match["entries"].split(", ")]
    assert len(entries) == 3 and all(entries), line  # --top_k defaults to 3
    percents = [float(e["percent"]) for e in entries]
    assert percents == sorted(percents, reverse=True) and sum(percents) <= 100.05, line
    assert entries[0]["name"] == f"class_{np.argmax(probabilities)}", line  # synthetic's names
    order = np.argsort(-probabilities)[:3]
    assert [e["name"] for e in entries] == [f"class_{i}" for i in order], line
    np.testing.assert_allclose(percents, 100 * probabilities[order], atol=0.051)
  older = reference_probabilities(runs["vit"], images, flip=True, step=12)
  assert np.abs(older - expected).max() > 1e-4  # the newest checkpoint is told apart
  for i in range(len(images)):  # several images: att_0.png, att_1.png, ...
    assert_png(tmp_path / f"att_{i}.png", panels=2 + 2)  # 2 heads, their mean, the rollout
  assert not (tmp_path / "att.png").exists()


def test_sa_cnn_json_with_flip_override_and_attention_map(runs, images, tmp_path):
  out = tmp_path / "maps" / "one.png"
  result = run_predict(f"--workdir={runs['sa_cnn']}", images[0], "--json", "--top_k=20", "--flip",
                       f"--attention_map={out}")
  assert result.returncode == 0, result.stderr
  [record] = [json.loads(line) for line in result.stdout.splitlines()]
  assert record["image"] == str(images[0]) and record["attention_map"] == str(out)
  assert_png(out, panels=2 * 2)  # one image: the name as given; centre and corner per layer
  top = record["top_k"]
  assert len(top) == 10  # --top_k is capped at num_classes
  probabilities = [c["probability"] for c in top]
  assert probabilities == sorted(probabilities, reverse=True)
  assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
  expected = reference_probabilities(runs["sa_cnn"], images[:1], flip=True)[0]
  np.testing.assert_allclose(probabilities, expected[[c["label"] for c in top]], atol=1e-5)
  assert top[0]["label"] == np.argmax(expected)


@pytest.mark.parametrize("case", ["missing workdir", "no checkpoint", "text file named x.png"])
def test_bad_input_is_one_error_line_and_exit_2(runs, tmp_path, case):
  workdir, image = runs["vit"], tmp_path / "x.png"
  image.write_text("not an image")
  if case == "missing workdir":
    workdir, needle = tmp_path / "nowhere", "does not exist"
  elif case == "no checkpoint":
    workdir, needle = tmp_path / "fresh", "no checkpoint"
    workdir.mkdir()
    (workdir / "config.json").write_text((runs["vit"] / "config.json").read_text())
  else:
    needle = "cannot decode image"
  result = run_predict(f"--workdir={workdir}", image)
  assert result.returncode == 2 and not result.stdout
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("jax_attn.predict: error: "), result.stderr
  assert needle in lines[0], lines[0]


def test_class_names_are_the_ones_the_run_recorded(runs, images, tmp_path):
  """config.json records the data's class names: predict needs no data source."""
  copy = tmp_path / "run"
  shutil.copytree(runs["vit"], copy)
  config = json.loads((copy / "config.json").read_text())
  assert config["class_names"] == [f"class_{i}" for i in range(10)]
  names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
  (copy / "config.json").write_text(json.dumps({**config, "class_names": names}))
  result = run_predict(f"--workdir={copy}", images[2], "--json", "--top_k=10")
  [record] = [json.loads(line) for line in result.stdout.splitlines()]
  assert {c["class"] for c in record["top_k"]} == set(names)
  assert all(c["class"] == names[c["label"]] for c in record["top_k"])
