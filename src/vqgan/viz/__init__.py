"""Visualizations: grids, plots and the HTML report. The plotting modules (matplotlib, scikit-learn) are
imported on first use, so that training, which only needs the grids, does not pay for them."""

import importlib

from vqgan.viz.grids import comparison_grid, save_comparison

_LAZY = {name: module for module, names in {
    "visualize": ("visualize_model",),
    "report": ("write_report", "report_for_run"),
    "plots": ("diagnostics_figures", "plot_usage_histogram", "save_code_histogram"),
    "curves": ("plot_loss_curves", "read_scalars"),
    "video": ("save_video_reconstruction",),
    "codebook": ("save_codebook_atlas", "plot_token_map"),
    "latent": ("plot_projection", "save_interpolation"),
}.items() for name in names}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"vqgan.viz.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vqgan.viz' has no attribute {name!r}")


__all__ = ["comparison_grid", "save_comparison", *_LAZY]
