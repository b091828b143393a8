"""Example models shipped with perfguard, which `perfguard init` configures: the seed CNN, an MLP
(and a BERT-base-sized encoder for bench/). They run in benchmark workers only (they import torch);
nothing of the service imports them."""
