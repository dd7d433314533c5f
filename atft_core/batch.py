"""The day batch: the unit the model, the losses and the trainer exchange.

A batch holds K trading days. Stock-days of all K days are concatenated day by day (PyG style),
so one GAT call runs over the block-diagonal union of the K day graphs and the per-day losses
slice rows with ``day_ptr``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor


@dataclass
class DayBatch:
    """K trading days of stock windows, targets and graphs.

    Shapes (N = total stock-days over the K days, L = lookback, F = features,
    H = horizons, E = edges):
        x:          (N, L, F) float32  feature windows, last step = the day itself (point-in-time)
        y:          (N, H)    float32  per-day normalised target (training); 0 where masked
        y_raw:      (N, H)    float32  raw executable returns (evaluation); NaN where masked
        mask:       (N, H)    bool     True where the target is known
        edge_index: (2, E)    int64    rows index into N; edges never cross days
        edge_attr:  (E, 2)    float32  [rho, same_sector]
        day_ptr:    (K+1,)    int64    rows of day k are day_ptr[k]:day_ptr[k+1]
        dates:      K dates; codes: (N,) str numpy array (host only)
        day_ptr_host: (K+1,) int64 on the CPU, set by :meth:`to` when day_ptr moves to a device:
                    the losses read day sizes from it without a device->host sync
    """

    x: Tensor
    y: Tensor
    y_raw: Tensor
    mask: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    day_ptr: Tensor
    dates: list[dt.date]
    codes: np.ndarray = field(repr=False)
    day_ptr_host: Tensor | None = field(default=None, repr=False)

    @property
    def num_days(self) -> int:
        return len(self.dates)

    @property
    def num_stock_days(self) -> int:
        return int(self.x.shape[0])

    def day_slices(self) -> list[slice]:
        p = self.day_ptr.tolist()
        return [slice(p[k], p[k + 1]) for k in range(len(p) - 1)]

    def day_index(self) -> Tensor:
        """(N,) int64: which of the K days each row belongs to."""
        counts = self.day_ptr[1:] - self.day_ptr[:-1]
        return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DayBatch:
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            x=mv(self.x), y=mv(self.y), y_raw=mv(self.y_raw), mask=mv(self.mask),
            edge_index=mv(self.edge_index), edge_attr=mv(self.edge_attr), day_ptr=mv(self.day_ptr),
            day_ptr_host=self.host_day_ptr(),
        )

    def host_day_ptr(self) -> Tensor:
        """day_ptr on the CPU (a copy, i.e. a sync, only if it was never on the host)."""
        if self.day_ptr_host is not None:
            return self.day_ptr_host
        return self.day_ptr if self.day_ptr.device.type == "cpu" else self.day_ptr.cpu()

    def pin_memory(self) -> DayBatch:
        pin = lambda t: t.pin_memory()  # noqa: E731
        return replace(
            self,
            x=pin(self.x), y=pin(self.y), y_raw=pin(self.y_raw), mask=pin(self.mask),
            edge_index=pin(self.edge_index), edge_attr=pin(self.edge_attr), day_ptr=pin(self.day_ptr),
        )
