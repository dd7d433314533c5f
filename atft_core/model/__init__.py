"""ATFT-GAT-FAN model package (SPEC 4)."""

from atft_core.model.atft import ATFTGATFAN

__all__ = ["ATFTGATFAN"]
