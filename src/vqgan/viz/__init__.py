"""Visualizations: grids, plots and the HTML report."""

from vqgan.viz.grids import comparison_grid, save_comparison

__all__ = ["comparison_grid", "save_comparison"]
