"""Pruning: structured pruning shrinks the tensors of unmixed layer pairs (and only those), L1
unstructured pruning zeroes weights and leaves no hooks behind."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monitor.examples import models
from monitor.transforms import prune


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Residual(nn.Module):
    """a's output is used twice (a residual); c -> d is a clean pair; d is the output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 16)
        self.c, self.d = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        h = h + self.b(h)
        return self.d(F.relu(self.c(h)))


class ConvBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


def test_the_mlp_loses_the_asked_fraction_of_hidden_neurons_but_keeps_its_output_size() -> None:
    model = models.mlp()
    pruned, report = prune.prune_structured(copy.deepcopy(model), 0.3)
    assert [(m.in_features, m.out_features) for m in pruned if isinstance(m, nn.Linear)] == [
        (1024, 717), (717, 717), (717, 10),
    ]
    assert report["kept"] == {"0": 717, "2": 717}
    assert report["params_after"] == parameter_count(pruned) < parameter_count(model) == report["params_before"]
    assert pruned(torch.randn(3, 1024)).shape == (3, 10)


def test_the_seed_cnn_prunes_conv1_to_conv2_and_fc1_to_fc2_and_skips_the_flatten() -> None:
    pruned, report = prune.prune_structured(models.seed_cnn(), 0.25)
    assert (pruned.conv1.out_channels, pruned.conv2.in_channels, pruned.conv2.out_channels) == (12, 12, 32)
    assert pruned.conv1.weight.shape == (12, 3, 3, 3) and pruned.conv2.weight.shape == (32, 12, 3, 3)
    assert (pruned.fc1.in_features, pruned.fc1.out_features) == (2048, 96)
    assert pruned.fc2.weight.shape == (10, 96)
    assert "flatten" in report["skipped"]["conv2"]
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_the_neurons_with_the_smallest_l1_norm_are_the_ones_removed() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 7.0).repeat(4, 1).T)  # row i has norm 4 * (i + 1)
        model[0].weight[[1, 4]] *= 0.01
        model[0].bias.copy_(torch.arange(6.0))
        model[2].weight.copy_(torch.arange(12.0).reshape(2, 6))
    pruned, _ = prune.prune_structured(copy.deepcopy(model), 2 / 6)
    kept = [0, 2, 3, 5]
    assert torch.equal(pruned[0].weight, model[0].weight[kept])
    assert torch.equal(pruned[0].bias, model[0].bias[kept])
    assert torch.equal(pruned[2].weight, model[2].weight[:, kept])


def test_a_producer_used_by_a_residual_is_skipped_and_the_clean_pair_is_pruned() -> None:
    pruned, report = prune.prune_structured(Residual(), 0.5)
    assert report["kept"] == {"c": 16}
    assert set(report["skipped"]) == {"a", "b"}
    assert "residual" in report["skipped"]["a"]
    assert (pruned.a.out_features, pruned.b.out_features) == (16, 16)
    assert (pruned.d.in_features, pruned.d.out_features) == (16, 4)


def test_a_batchnorm_between_two_convolutions_is_shrunk_with_its_producer() -> None:
    model = ConvBatchNorm()
    model.bn1.running_mean.uniform_()
    model.eval()
    pruned, report = prune.prune_structured(copy.deepcopy(model), 0.5)
    assert report["kept"] == {"conv1": 4}
    assert pruned.bn1.num_features == 4
    assert all(t.shape == (4,) for t in (pruned.bn1.weight, pruned.bn1.bias, pruned.bn1.running_var))
    assert pruned.conv2.weight.shape == (4, 4, 3, 3)
    x = torch.randn(2, 3, 6, 6)
    assert pruned(x).shape == model(x).shape


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(models.mlp, (2, 1024)), (models.seed_cnn, (2, 3, 32, 32)), (ConvBatchNorm, (2, 3, 6, 6)), (Residual, (2, 8))],
)
def test_rebuilding_from_the_kept_widths_gives_the_same_shapes_and_state_dict_keys(factory, shape) -> None:
    pruned, report = prune.prune_structured(factory().eval(), 0.4)
    rebuilt = prune.rebuild_structured(factory().eval(), report["kept"])
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(shape)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), pruned(x))


def test_a_pair_with_a_tied_layer_is_skipped() -> None:
    model = models.seeded_mlp([8, 8, 8, 8, 2], seed=0)
    model[4].weight = model[2].weight
    pairs, skipped = prune.find_pairs(model)
    assert pairs == []  # 0 -> 2 would cut 2's inputs, 2 -> 4 and 4 -> 6 the tied matrix itself
    assert set(skipped) == {"0", "2", "4"} and all("tied" in why for why in skipped.values())


def test_rebuilding_refuses_a_layer_that_is_not_a_prunable_producer() -> None:
    with pytest.raises(prune.PruneError, match="4 are not prunable"):
        prune.rebuild_structured(models.mlp(), {"4": 5})


def test_a_single_linear_has_nothing_to_prune() -> None:
    with pytest.raises(prune.PruneError, match="nothing to prune structurally in Linear"):
        prune.prune_structured(nn.Linear(8, 4), 0.3)


def test_an_amount_too_small_to_remove_a_neuron_is_refused() -> None:
    with pytest.raises(prune.PruneError, match="removes no neuron"):
        prune.prune_structured(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 0.05)


def test_a_model_fx_cannot_trace_is_refused_with_the_reason() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) if x.sum() > 0 else x

    with pytest.raises(prune.PruneError, match="torch.fx cannot trace Branchy"):
        prune.prune_structured(Branchy(), 0.5)


def test_pruned_parameters_can_still_be_fine_tuned() -> None:
    pruned, _ = prune.prune_structured(models.mlp(), 0.3)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in pruned.parameters())
    pruned(torch.randn(2, 1024)).sum().backward()
    assert pruned[0].weight.grad is not None and pruned[0].weight.grad.shape == (717, 1024)


def test_l1_unstructured_reaches_the_asked_sparsity_and_leaves_no_hooks() -> None:
    model = models.seed_cnn()
    pruned, report = prune.prune_l1_unstructured(copy.deepcopy(model), 0.6)
    layers = [pruned.conv1, pruned.conv2, pruned.fc1, pruned.fc2]
    for layer in layers:
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.6, abs=0.01)
    assert report["sparsity"] == pytest.approx(0.6, abs=0.01) and report["layers"] == 4
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    assert set(pruned.state_dict()) == set(model.state_dict())
    assert parameter_count(pruned) == parameter_count(model)


def test_l1_unstructured_refuses_a_model_without_weights_to_prune() -> None:
    with pytest.raises(prune.PruneError, match="no Linear or convolution"):
        prune.prune_l1_unstructured(nn.Sequential(nn.ReLU()), 0.5)
