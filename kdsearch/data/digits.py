"""scikit-learn's bundled handwritten digits (1,797 8x8 images): the offline default.

It has no official test split, so a fixed, stratified 20% is held out as test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdsearch.data.splits import RawDataset


def load_digits(data_dir: Path | None = None, download: bool = False, **_: object) -> RawDataset:
    from sklearn.datasets import load_digits as sk_load_digits  # scikit-learn takes a second to import: digits only
    from sklearn.model_selection import train_test_split  # (as above)

    bunch = sk_load_digits()
    # Pixel values are 0..16; scale to the 0..255 range every other dataset uses.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    return RawDataset(
        train_x=torch.from_numpy(x_train.copy()),
        train_y=torch.from_numpy(y_train.copy()),
        test_x=torch.from_numpy(x_test.copy()),
        test_y=torch.from_numpy(y_test.copy()),
        class_names=[str(d) for d in range(10)],
    )
