"""Visualizations: grids, plots and the HTML report. The plotting modules (matplotlib, scikit-learn) are
imported on first use, so that training, which only needs the grids, does not pay for them."""

import importlib

from vqgan.viz.grids import comparison_grid, save_comparison

_LAZY = {  # name: its module
    "visualize_model": "visualize", "write_report": "report", "report_for_run": "report",
    "diagnostics_figures": "plots", "plot_usage_histogram": "plots", "save_code_histogram": "plots",
    "plot_loss_curves": "curves", "read_scalars": "curves", "save_video_reconstruction": "video",
    "save_codebook_atlas": "codebook", "plot_token_map": "codebook", "plot_projection": "latent",
    "save_interpolation": "latent",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"vqgan.viz.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vqgan.viz' has no attribute {name!r}")


__all__ = ["comparison_grid", "save_comparison", *_LAZY]
