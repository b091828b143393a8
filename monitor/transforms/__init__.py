"""How a candidate model is built from the current one, inside the worker (the only side that imports
torch): the catalog's recipes (quantization, bf16, layout, compilation) and structured pruning. The
parent side picks recipes by name from `monitor.core.catalog` and never imports this package."""
