"""Pruning recipes: structured pruning that really shrinks tensors, and L1 unstructured pruning.

Structured pruning removes whole output neurons (Linear) or channels (Conv2d) of a layer together with
the matching inputs of the layer it feeds, so the matrices get smaller and dense kernels get faster.
Which layers feed which is read from the `torch.fx` graph of the model; a pair is pruned only when the
features flow unmixed from one layer to the next (through activations, dropout, pooling or a
BatchNorm, which is shrunk too). Everything else is skipped and said so: a residual or branch that
uses the output elsewhere, a flatten or reshape that changes what a feature is, any op that mixes
features. The model's output layer never loses outputs. Unstructured pruning only zeroes weights:
the model stays dense (and, on dense kernels, as fast); it is here for when it is asked for.

Runs inside the worker only (imports torch). Fine-tuning after pruning is the caller's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import fx, nn
from torch.nn.utils import prune as torch_prune


class PruneError(ValueError):
    """The model has nothing this pruning can remove, or the amount asked for removes nothing."""


@dataclass(frozen=True, slots=True)
class PrunablePair:
    """A layer whose outputs feed, unmixed, the inputs of the next one (through `norms` on the way)."""

    producer: str
    consumer: str
    norms: tuple[str, ...] = ()  # BatchNorm layers between the two, shrunk with the producer


# Ops a feature passes through unchanged and unmixed: one tensor in, the same features out.
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Identity,
    nn.Dropout, nn.AlphaDropout,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.mish, F.elu, F.selu, F.celu, F.leaky_relu,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.dropout,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}
# Per-channel on a 4-D conv output (pooling works on each channel's own plane).
_CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout2d,
)
_CHANNELWISE_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout2d}
_RESHAPE_MODULES: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Unflatten)
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "unflatten"}


def find_pairs(model: nn.Module) -> tuple[list[PrunablePair], dict[str, str]]:
    """The prunable layer pairs of `model`, and the layers left alone with the reason for each.

    A layer whose output is the model's output is neither (it is never pruned, nothing to say).
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:
        raise PruneError(
            f"torch.fx cannot trace {type(model).__name__}, so its layer pairs cannot be found: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    owners = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    tied = {name for name, m in modules.items() if any(owners[id(p)] > 1 for p in m.parameters(recurse=False))}
    pairs: list[PrunablePair] = []
    skipped: dict[str, str] = {}
    for node in graph.nodes:
        if _layer_kind(node, modules) is None:
            continue
        name = str(node.target)
        if calls[name] > 1:
            skipped[name] = "the layer is called more than once (shared weights)"
            continue
        found = _follow(node, modules, calls)
        if isinstance(found, PrunablePair) and {found.producer, found.consumer, *found.norms} & tied:
            found = "a layer of the pair shares its weights with another module (tied weights)"
        if isinstance(found, PrunablePair):
            pairs.append(found)
        elif found is not None:
            skipped[name] = found
    return pairs, skipped


def prune_structured(model: nn.Module, amount: float) -> tuple[nn.Module, dict[str, object]]:
    """Remove the `amount` fraction of each prunable producer's outputs with the smallest L1 norm, in place.

    Returns the model and what was done: `kept` (output width kept per pruned layer, all `rebuild_structured`
    needs), `skipped` (layer -> why it was left alone), and the parameter counts before and after.
    """
    if not 0.0 < amount < 1.0:
        raise PruneError(f"amount must be a fraction between 0 and 1 (exclusive), not {amount!r}")
    pairs, skipped = find_pairs(model)
    if not pairs:
        _nothing_to_prune(model, skipped)
    modules = dict(model.named_modules())
    before = _parameter_count(model)
    kept_indices: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        # All choices are made on the original weights, before any layer loses its input columns.
        for pair in pairs:
            weight = modules[pair.producer].weight
            width = weight.shape[0]
            keep = max(1, width - round(amount * width))
            scores = weight.abs().flatten(1).sum(dim=1)
            kept_indices[pair.producer] = scores.topk(keep).indices.sort().values
    if all(len(kept_indices[p.producer]) == modules[p.producer].weight.shape[0] for p in pairs):
        raise PruneError(f"amount {amount} removes no neuron or channel from any prunable layer; ask for more")
    _shrink(modules, pairs, kept_indices)
    kept = {name: len(indices) for name, indices in kept_indices.items()}
    after = _parameter_count(model)
    return model, {"kept": kept, "skipped": skipped, "params_before": before, "params_after": after}


def rebuild_structured(model: nn.Module, kept: dict[str, int]) -> nn.Module:
    """Shrink a fresh `model`, in place, to the widths `prune_structured` kept (the weights are then
    whatever the caller loads; this builds only the shapes)."""
    pairs = {pair.producer: pair for pair in find_pairs(model)[0]}
    unknown = sorted(set(kept) - set(pairs))
    if unknown:
        raise PruneError(f"layers {', '.join(unknown)} are not prunable producers of {type(model).__name__}")
    modules = dict(model.named_modules())
    indices = {name: torch.arange(width, device=modules[name].weight.device) for name, width in kept.items()}
    _shrink(modules, [pairs[name] for name in kept], indices)
    return model


def prune_l1_unstructured(model: nn.Module, amount: float) -> tuple[nn.Module, dict[str, object]]:
    """Zero the `amount` fraction of smallest weights of every Linear and convolution, in place.

    The pruning reparametrisation is removed afterwards: its forward pre-hook recomputes
    weight = weight_orig * mask on every call (2x slower), and a dense weight with zeros is the point.
    Returns the model and `sparsity`, the fraction of those weights now zero.
    """
    if not 0.0 < amount < 1.0:
        raise PruneError(f"amount must be a fraction between 0 and 1 (exclusive), not {amount!r}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    if not layers:
        raise PruneError(f"{type(model).__name__} has no Linear or convolution weights to prune")
    for layer in layers:
        torch_prune.l1_unstructured(layer, "weight", amount=amount)
        torch_prune.remove(layer, "weight")
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    total = sum(layer.weight.numel() for layer in layers)
    return model, {"sparsity": round(zeros / total, 4), "layers": len(layers)}


def _layer_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """'linear' or 'conv' for a call of a layer whose inputs or outputs can be pruned, else None."""
    if node.op != "call_module":
        return None
    module = modules[str(node.target)]
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return "conv"
    return None


def _follow(producer: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> PrunablePair | str | None:
    """Where the producer's output goes: a pair, the reason it cannot be pruned, or None (model output)."""
    kind = _layer_kind(producer, modules)
    name = str(producer.target)
    norms: list[str] = []
    node = producer
    while True:
        users = list(node.users)
        if len(users) != 1:
            if node is producer and not users:
                return "its output is unused"
            return f"its output is used {len(users)} times (a residual or a branch)"
        user = users[0]
        if user.op == "output":
            return None
        if _layer_kind(user, modules) is not None:
            if _layer_kind(user, modules) != kind:
                return f"it feeds {user.target}, a layer of another kind"
            if user.args != (node,) or user.kwargs:
                return f"{user.target} takes other inputs as well"
            if calls[user.target] > 1:
                return f"{user.target} is called more than once (shared weights)"
            return PrunablePair(name, str(user.target), tuple(norms))
        if _is_reshape(user, modules):
            return f"its output is reshaped ({_describe(user)}) before the next layer"
        if not _takes_only(user, node):
            return f"{_describe(user)} combines its output with other tensors"
        norm = _batch_norm(user, modules, modules[name], kind)
        if norm is not None:
            if calls[norm] > 1:
                return f"{norm} is called more than once"
            norms.append(norm)
        elif not _passes_through(user, modules, kind):
            return f"{_describe(user)} in between may mix features"
        node = user


def _takes_only(user: fx.Node, node: fx.Node) -> bool:
    """The op's first argument is `node` and no other argument is a tensor from the graph."""
    if not user.args or user.args[0] is not node:
        return False
    others: list[fx.Node] = []
    fx.node.map_arg((user.args[1:], user.kwargs), others.append)
    return not others


def _passes_through(user: fx.Node, modules: dict[str, nn.Module], kind: str | None) -> bool:
    if user.op == "call_module":
        module = modules[str(user.target)]
        if isinstance(module, _ELEMENTWISE_MODULES):
            return True
        if kind == "conv" and isinstance(module, _CHANNELWISE_MODULES):
            return not getattr(module, "return_indices", False)
        return False
    if user.op == "call_function":
        if user.target in _ELEMENTWISE_FUNCTIONS:
            return True
        return kind == "conv" and user.target in _CHANNELWISE_FUNCTIONS and not user.kwargs.get("return_indices")
    if user.op == "call_method":
        return user.target in _ELEMENTWISE_METHODS
    return False


def _batch_norm(user: fx.Node, modules: dict[str, nn.Module], producer: nn.Module, kind: str | None) -> str | None:
    """The name of a BatchNorm over the producer's features (to shrink with it), else None."""
    if user.op != "call_module":
        return None
    module = modules[str(user.target)]
    norm_type = nn.BatchNorm2d if kind == "conv" else nn.BatchNorm1d
    weight = producer.weight
    assert isinstance(weight, torch.Tensor)
    if isinstance(module, norm_type) and module.num_features == weight.shape[0]:
        return str(user.target)
    return None


def _is_reshape(user: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if user.op == "call_module":
        return isinstance(modules[str(user.target)], _RESHAPE_MODULES)
    if user.op == "call_function":
        return user.target in _RESHAPE_FUNCTIONS
    return user.op == "call_method" and user.target in _RESHAPE_METHODS


def _describe(node: fx.Node) -> str:
    target = node.target
    return str(target) if isinstance(target, str) else getattr(target, "__name__", str(target))


def _shrink(modules: dict[str, nn.Module], pairs: list[PrunablePair], kept: dict[str, torch.Tensor]) -> None:
    """Keep only the `kept` outputs of each producer, the same features of its BatchNorms, and the
    same inputs of its consumer."""
    with torch.no_grad():
        for pair in pairs:
            indices = kept[pair.producer]
            producer = modules[pair.producer]
            _select(producer, "weight", 0, indices)
            _select(producer, "bias", 0, indices)
            _set_width(producer, out=len(indices))
            for name in pair.norms:
                norm = modules[name]
                assert isinstance(norm, nn.modules.batchnorm._BatchNorm)  # _batch_norm found it so
                for tensor_name in ("weight", "bias", "running_mean", "running_var"):
                    _select(norm, tensor_name, 0, indices)
                norm.num_features = len(indices)
            consumer = modules[pair.consumer]
            _select(consumer, "weight", 1, indices)
            _set_width(consumer, into=len(indices))


def _select(module: nn.Module, name: str, dim: int, indices: torch.Tensor) -> None:
    """Replace a parameter or buffer by the slices `indices` along `dim`, keeping its kind."""
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    smaller = tensor.index_select(dim, indices).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(smaller, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, smaller)


def _set_width(module: nn.Module, out: int | None = None, into: int | None = None) -> None:
    if isinstance(module, nn.Linear):
        module.out_features = out if out is not None else module.out_features
        module.in_features = into if into is not None else module.in_features
    elif isinstance(module, nn.Conv2d):
        module.out_channels = out if out is not None else module.out_channels
        module.in_channels = into if into is not None else module.in_channels


def _parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _nothing_to_prune(model: nn.Module, skipped: dict[str, str]) -> None:
    reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    raise PruneError(
        f"nothing to prune structurally in {type(model).__name__}: no Linear feeds another Linear, nor a "
        f"Conv2d another Conv2d, through element-wise ops only" + (f" (left alone: {reasons})" if reasons else "")
    )
