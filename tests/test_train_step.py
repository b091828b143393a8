"""One training step as the sampler will time it: it really trains (the loss falls on a fixed batch,
the weights move), every optimiser and loss by name or import path, AMP on the CPU, and a spec that
cannot be built is refused naming its field."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monitor.examples import models
from monitor.harness.train_step import TrainSpec, TrainSpecError, make_step


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def half_sum(output: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A loss by import path: fn(output, inputs) -> loss."""
    return (output.float() - inputs[0][:, :4]).pow(2).mean() / 2


class Adagrad(torch.optim.Adagrad):
    """An optimiser by import path."""


X = (torch.randn(8, 16, generator=torch.Generator().manual_seed(1)),)


@pytest.mark.parametrize("spec", [
    TrainSpec(), TrainSpec(optimizer="adam", lr=0.01), TrainSpec(loss="mse", optimizer="adamw", lr=0.01),
    TrainSpec(loss="tests.test_train_step:half_sum", optimizer="tests.test_train_step:Adagrad", lr=0.1),
    TrainSpec(lr=0.1, amp="bf16"),
])
def test_the_step_trains_the_model_on_a_fixed_batch(spec: TrainSpec) -> None:
    model = classifier()
    before = [p.detach().clone() for p in model.parameters()]
    step = make_step(model, X, spec, "cpu")
    losses = [step() for _ in range(30)]
    assert model.training
    assert losses[-1] < losses[0], losses
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))


def test_the_seed_cnn_trains_one_step_at_a_time() -> None:
    model = models.seed_cnn()
    images = models.seed_cnn_eval()[0][0][:16]
    step = make_step(model, (images,), TrainSpec(lr=0.05), "cpu")
    first = step()
    assert first > 0 and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("spec", "message"), [
    (TrainSpec(loss="hinge"), r"train\.loss 'hinge' is not one of cross_entropy, mse"),
    (TrainSpec(optimizer="lion"), r"train\.optimizer 'lion' is not one of sgd, adam, adamw"),
    (TrainSpec(lr=0.0), r"train\.lr must be positive"),
])
def test_a_spec_that_cannot_be_built_names_its_field(spec: TrainSpec, message: str) -> None:
    with pytest.raises(TrainSpecError, match=message):
        make_step(classifier(), X, spec, "cpu")


def test_cross_entropy_needs_class_scores() -> None:
    with pytest.raises(TrainSpecError, match=r"needs class scores \[batch, classes\]"):
        make_step(nn.Sequential(nn.Linear(16, 1), nn.Flatten(0)), X, TrainSpec(), "cpu")


def test_a_model_without_parameters_is_refused() -> None:
    with pytest.raises(TrainSpecError, match="has no parameter to train"):
        make_step(nn.ReLU(), X, TrainSpec(loss="mse"), "cpu")
