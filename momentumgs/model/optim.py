"""Optimizer-state surgery for torch.optim.Adam when the rows of a parameter are added or removed
(anchor growing and pruning), the idea of gsplat's `strategy/ops.py` and Scaffold-GS's
`cat_tensors_to_optimizer` / `_prune_anchor_optimizer`: the Parameter is replaced by a new one and its
per-row moments are extended with zeros or sliced; the step counter and the param group stay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# per-element Adam / AdamW state that follows the rows of the parameter
_ROW_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _replace(
    optimizer: torch.optim.Optimizer | None,
    param: torch.Tensor,
    new_data: torch.Tensor,
    edit_state: Callable[[torch.Tensor], torch.Tensor],
) -> nn.Parameter:
    new_param = nn.Parameter(new_data, requires_grad=param.requires_grad)
    if optimizer is None:
        return new_param
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is not param:
                continue
            group["params"][i] = new_param
            state = optimizer.state.pop(param, None)
            if state is not None:
                for key in _ROW_STATE:
                    if key in state and torch.is_tensor(state[key]) and state[key].shape == param.shape:
                        state[key] = edit_state(state[key])
                optimizer.state[new_param] = state
            return new_param
    return new_param  # not optimised (e.g. frozen): only the tensor changes


@torch.no_grad()
def extend_params(
    optimizer: torch.optim.Optimizer | None, param: torch.Tensor, new_rows: torch.Tensor
) -> nn.Parameter:
    """Append `new_rows` [n, ...] to `param` [N, ...]; the new rows' Adam moments are zero.
    Returns the new Parameter, which replaces `param` in the optimizer."""
    new_rows = new_rows.to(param)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros((new_rows.shape[0], *t.shape[1:]))], dim=0)

    return _replace(optimizer, param, torch.cat([param.detach(), new_rows], dim=0), pad)


@torch.no_grad()
def keep_rows(
    optimizer: torch.optim.Optimizer | None, param: torch.Tensor, mask: torch.Tensor
) -> nn.Parameter:
    """Keep the rows of `param` [N, ...] where `mask` [N] (bool) is true, together with their Adam
    moments. Returns the new Parameter, which replaces `param` in the optimizer."""
    if mask.dtype != torch.bool or mask.shape != param.shape[:1]:
        raise ValueError(f"keep_rows needs a bool mask of shape [{param.shape[0]}], got {tuple(mask.shape)}")

    def select(t: torch.Tensor) -> torch.Tensor:
        return t[mask]

    return _replace(optimizer, param, param.detach()[mask], select)
