"""AdamW with weight decay on weight matrices only (issue 13).

Decoupled weight decay pulls every decayed parameter towards zero. For a bias, a LayerNorm
gain/shift or a per-feature embedding that pull is not regularisation but a bias: a LayerNorm gain
decayed towards 0 shrinks its whole output, an embedding of a rarely informative feature is erased.
So, as in the usual transformer recipe, only multiplicative weights (``ndim >= 2``) of layers that
are not normalisations or embeddings are decayed; everything else gets ``weight_decay = 0``.
Embeddings are ``nn.Embedding`` modules and parameters named ``embed*`` (the VSN's per-feature
``embed_weight`` / ``embed_bias``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.EmbeddingBag,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
)


def decays(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Whether ``module``'s own parameter ``name`` gets weight decay (module docstring)."""
    return (param.ndim >= 2 and not isinstance(module, NO_DECAY_MODULES)
            and not name.startswith("embed"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[decayed group, no-decay group] with full parameter names under ``"names"`` (for logs and
    tests); trainable parameters only, each exactly once (shared ones by first owner)."""
    seen: set[int] = set()
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{name}" if mod_name else name
            (decay if decays(module, name, p) else no_decay).append((full, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def build_adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, weight_decay=weight_decay)
