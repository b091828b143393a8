"""The digits data the seed CNN learns from, shaped like the CIFAR-sized input it was written for.

scikit-learn ships the 8x8 handwritten digits inside the wheel, so the example needs no download and
behaves the same on an offline benchmark host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling

IMAGE_SIZE = 32
CHANNELS = 3
# Fixed so that every process, and every run months apart, holds out the same images.
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class DigitsSplit:
    """Train and held-out tensors: images float32 [N, 3, 32, 32] in [0, 1], labels int64 [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    held_out_images: torch.Tensor
    held_out_labels: torch.Tensor


def to_cnn_input(pixels: torch.Tensor) -> torch.Tensor:
    """Turn [N, 64] raw digit pixels (0..16) into [N, 3, 32, 32] images in [0, 1]."""
    images = (pixels.to(torch.float32) / 16.0).reshape(-1, 1, 8, 8)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    # The seed CNN expects RGB; grey digits carry the same value on every channel.
    return images.clamp_(0.0, 1.0).repeat(1, CHANNELS, 1, 1).contiguous()


def load_split() -> DigitsSplit:
    """The fixed stratified 80/20 split of scikit-learn's bundled digits."""
    # Imported here so that the MLP example, and anything that only imports this package, works
    # without the optional scikit-learn dependency.
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    train_x, held_x, train_y, held_y = train_test_split(
        digits.data,
        digits.target,
        test_size=HELD_OUT_FRACTION,
        stratify=digits.target,
        random_state=SPLIT_SEED,
    )
    return DigitsSplit(
        train_images=to_cnn_input(torch.from_numpy(train_x)),
        train_labels=torch.from_numpy(train_y).to(torch.int64),
        held_out_images=to_cnn_input(torch.from_numpy(held_x)),
        held_out_labels=torch.from_numpy(held_y).to(torch.int64),
    )


def batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (inputs, labels) batches; a list so the harness can iterate it more than once."""
    return [
        (images[start : start + batch_size], labels[start : start + batch_size])
        for start in range(0, len(labels), batch_size)
    ]
