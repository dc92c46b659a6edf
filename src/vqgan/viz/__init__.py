"""Visualizations: grids, plots and the HTML report.

The plotting modules (matplotlib, scikit-learn) are imported on first use, so that training, which only needs the
grids, does not pay for them.
"""

from vqgan.viz.grids import comparison_grid, save_comparison

_LAZY = {
    "visualize_model": "vqgan.viz.visualize",
    "write_report": "vqgan.viz.report",
    "report_for_run": "vqgan.viz.report",
    "diagnostics_figures": "vqgan.viz.plots",
    "plot_usage_histogram": "vqgan.viz.plots",
    "save_code_histogram": "vqgan.viz.plots",
    "plot_loss_curves": "vqgan.viz.curves",
    "read_scalars": "vqgan.viz.curves",
    "save_video_reconstruction": "vqgan.viz.video",
    "save_codebook_atlas": "vqgan.viz.codebook",
    "plot_token_map": "vqgan.viz.codebook",
    "plot_projection": "vqgan.viz.latent",
    "save_interpolation": "vqgan.viz.latent",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqgan.viz' has no attribute {name!r}")


__all__ = ["comparison_grid", "save_comparison", *_LAZY]
