"""Distil your own teacher into your own student on your own images, end to end.

    python examples/own_model_and_data.py [WORK_FOLDER]

Writes into WORK_FOLDER (default ./own-example) what a user arrives with, then runs the
commands they would type there:

- ``mynets.py``: their own small CNN, a module in the folder, not installed;
- ``images/train/<class>/*.png`` and ``images/test/<class>/*.png``: their images (scikit-learn's
  digits saved as PNG files, so this runs offline);
- ``teacher-resnet18.pth``: a torchvision ResNet-18's state dict with ImageNet's 1000-class head,
  as a user's fine-tuned or downloaded teacher would be (random weights here: no network);
- ``space.yaml``: the search.

Then ``kdsearch sweep`` fine-tunes the teacher once (new 10-class head, cached), searches the KD
temperature and weight for the CNN with Ray Tune + Optuna, and ``kdsearch export`` writes the
best student as ONNX. It prints each command and the wall time (about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

MYNETS = '''
"""The user's own student: any nn.Module taking num_classes and in_channels."""
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes, in_channels, width=16):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()
        )
        self.block3 = nn.Sequential(
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(x)))
        return self.classifier(self.pool(x).flatten(1))
'''

SPACE = """
name: own
fixed:
  method: kd
  dataset: imagefolder
  image_size: 32
  teacher: torchvision.models:resnet18
  teacher_checkpoint: teacher-resnet18.pth
  teacher_epochs: 6
  teacher_lr: 0.05
  teacher_head_lr: 0.1
  student: mynets:TinyNet
  student_args: {width: 16}
  epochs: 12
  lr: 0.1
  cache_dir: cache
space:
  temperature: {loguniform: [1, 10]}
  alpha: {uniform: [0.3, 0.95]}
search:
  num_samples: 6
  sampler: tpe
  n_startup_trials: 3
  scheduler: asha
  grace_period: 4
  seed: 0
"""


def write_images(root: Path) -> int:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        split = "test" if i % 10 == 0 else "train"
        folder = root / split / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 16).clip(0, 255).astype("uint8"), mode="L").save(folder / f"{i:04d}.png")
    return len(digits.images)


def write_teacher(path: Path) -> None:
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), path)  # weights=IMAGENET1K_V1 where there is a network


def run(command: list[str], cwd: Path) -> None:
    print(f"$ {shlex.join(command)}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mynets imports from the folder, nothing else
    subprocess.run(command, cwd=cwd, check=True, env=env)


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "own-example").resolve()
    if (work / "sweeps" / "own").exists():
        print(f"{work} already holds this example's sweep: pass another folder, or delete it", file=sys.stderr)
        return 2
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    (work / "mynets.py").write_text(textwrap.dedent(MYNETS).lstrip())
    (work / "space.yaml").write_text(textwrap.dedent(SPACE).lstrip())
    n = write_images(work / "images")
    write_teacher(work / "teacher-resnet18.pth")
    print(f"wrote {work}/mynets.py, {n} PNG images in {work}/images, teacher-resnet18.pth and space.yaml")
    kdsearch = str(Path(sys.executable).with_name("kdsearch"))
    run([kdsearch, "sweep", "space.yaml", "--data-dir", "images", "--tracking-uri", f"sqlite:///{work}/mlflow.db"], work)
    run([kdsearch, "export", "own", "--format", "onnx", "--out", "export"], work)
    print(f"done in {time.perf_counter() - started:.0f} s: the student is {work}/export/model.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
