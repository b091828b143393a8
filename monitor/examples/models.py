"""Example models that perfguard benchmarks out of the box, named in a config as "monitor.examples.models:NAME".

`seed_cnn` is the small CNN from the common PyTorch tutorial, trained on bundled digits so that
accuracy checks have something real to guard; `mlp` is a plain fixed-weight network for pure speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import nn

from monitor.examples import digits

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 64
MLP_WIDTH = 1024
MLP_SEED = 0
# Training never needs more: the model is tiny and extra threads only contend with other workers.
MAX_TRAINING_THREADS = 4


class SimpleCNN(nn.Module):
    """The seed CNN: two conv/pool stages and two linear layers over 3x32x32 input, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(32 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        logits: torch.Tensor = self.fc2(x)
        return logits


@dataclass(frozen=True)
class TrainingRecipe:
    """Everything that decides the seed CNN's weights; its fingerprint names the cached file."""

    # Bump when SimpleCNN or the training loop changes in a way the fields below do not show.
    revision: int = 1
    seed: int = 0
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-3
    split_seed: int = digits.SPLIT_SEED
    held_out_fraction: float = digits.HELD_OUT_FRACTION

    def fingerprint(self) -> str:
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


SEED_CNN_RECIPE = TrainingRecipe()


def cache_dir() -> Path:
    """Where trained weights live: $PERFGUARD_CACHE_DIR, else $XDG_CACHE_HOME/perfguard, else ~/.cache."""
    explicit = os.environ.get("PERFGUARD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "perfguard"


def seed_cnn_cache_path(recipe: TrainingRecipe = SEED_CNN_RECIPE) -> Path:
    """The file that holds the weights trained by `recipe`; a changed recipe gets a new file."""
    return cache_dir() / f"seed_cnn-{recipe.fingerprint()}.pt"


@contextlib.contextmanager
def _training_threads() -> Iterator[None]:
    """Use a few threads while training, then give the caller back exactly what it had set.

    The harness pins its own thread count for the measurement; training on first use inside a
    worker must not leave a different one behind.
    """
    before = torch.get_num_threads()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, min(available or 1, MAX_TRAINING_THREADS)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_seed_cnn(recipe: TrainingRecipe = SEED_CNN_RECIPE) -> SimpleCNN:
    """Train a SimpleCNN on the digits training split; leaves the global RNG state untouched."""
    split = digits.load_split()
    # fork_rng so that seeding here cannot change what the caller's own random draws produce.
    with torch.random.fork_rng(devices=[]), _training_threads():
        torch.manual_seed(recipe.seed)
        model = SimpleCNN()
        shuffle = torch.Generator().manual_seed(recipe.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
        model.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(split.train_labels), generator=shuffle)
            for start in range(0, len(order), recipe.batch_size):
                index = order[start : start + recipe.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(split.train_images[index]), split.train_labels[index])
                loss.backward()
                optimizer.step()
    return model.eval()


def _write_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save so that a reader never sees a half-written file, even when two workers train at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _load_cached(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached state_dict, or None when there is none or it cannot be read (then we retrain)."""
    try:
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    except FileNotFoundError:
        return None
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        log.warning("seed CNN cache %s is unreadable (%s); retraining", path, error)
        return None


def seed_cnn() -> SimpleCNN:
    """Factory: the trained seed CNN in eval mode, trained on first use and cached on disk."""
    path = seed_cnn_cache_path()
    state = _load_cached(path)
    if state is None:
        log.info("training the seed CNN (no cached weights at %s)", path)
        model = train_seed_cnn()
        _write_atomically(model.state_dict(), path)
        return model
    # Built on the meta device: random init would be thrown away and would consume the caller's RNG.
    with torch.device("meta"):
        model = SimpleCNN()
    model.load_state_dict(state, assign=True)
    return model.eval()


def seed_cnn_prepare() -> None:
    """Prepare step: train and cache the seed CNN's weights if they are not cached yet, so that no
    benchmark worker trains (the config's `prepare`; the factory still trains if the cache is gone)."""
    seed_cnn()


def seed_cnn_eval() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eval data for seed_cnn: held-out digits as (float32 [B,3,32,32], int64 [B]) batches of 64."""
    split = digits.load_split()
    return digits.batches(split.held_out_images, split.held_out_labels, EVAL_BATCH_SIZE)


def mlp() -> nn.Sequential:
    """Factory: a 1024-1024-1024-10 MLP with the same weights on every call, in eval mode."""
    return seeded_mlp([MLP_WIDTH, MLP_WIDTH, MLP_WIDTH, 10], MLP_SEED)


def seeded_mlp(widths: list[int], seed: int) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them, the same weights on every call, in
    eval mode."""
    layers: list[nn.Module] = []
    # fork_rng keeps the fixed seed from resetting the random stream of whoever builds the model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers).eval()


ENCODER_LAYERS = 12
ENCODER_WIDTH = 768
ENCODER_HEADS = 12
ENCODER_SEED = 0


def encoder() -> nn.TransformerEncoder:
    """Factory: a transformer encoder the size of BERT-base (12 layers, 768 wide, 12 heads, 3072
    feed-forward; about 85 M parameters), seeded weights, no download. Input: [batch, tokens, 768]
    embeddings."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ENCODER_SEED)
        layer = nn.TransformerEncoderLayer(
            ENCODER_WIDTH, ENCODER_HEADS, dim_feedforward=4 * ENCODER_WIDTH, dropout=0.0, batch_first=True
        )
        model = nn.TransformerEncoder(layer, ENCODER_LAYERS, enable_nested_tensor=False)
    return model.eval()
