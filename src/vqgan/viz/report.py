"""One self-contained HTML page per run: its configuration, metrics and every picture, embedded as base64 data
URIs so that the file can be mailed, attached to an issue or opened offline without its folder. The page's
script counts the images that decoded (``img.complete && img.naturalWidth > 0``) into ``data-images-loaded`` /
``data-images-total`` attributes of ``<body>``, read back by a headless browser."""

import base64
import html
import json
import mimetypes
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vqgan.viz.plots import FigureRecord, diagnostics_figures

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;
color:#1d2228}header{background:#1d2228;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}main{padding:8px 28px 40px;max-width:1300px}
h2{border-bottom:2px solid #d9dde3;padding-bottom:4px;margin-top:30px;font-size:18px}
table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #d9dde3;padding:4px 10px;text-align:left}th{background:#eef0f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.tables{display:flex;flex-wrap:wrap;gap:22px;align-items:flex-start;margin-top:14px}
.tables h3{font-size:15px;margin:6px 0}.grid{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:10px;
max-width:calc(50% - 32px)}@media (max-width:900px){figure{max-width:100%}}
figure img,figure video{max-width:100%;height:auto;display:block;image-rendering:pixelated}
figcaption{font-size:12px;color:#4a525c;margin-top:6px;max-width:640px}figcaption b{color:#1d2228}
pre{background:#fff;border:1px solid #d9dde3;padding:10px;font-size:12px;overflow:auto;max-height:420px}
.note{font-size:13px;color:#7a4b00;background:#fff7e6;border:1px solid #f0d9a8;padding:6px 10px;
border-radius:4px;margin:6px 0}"""

_SCRIPT = """addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
});"""


def _cell(v: Any) -> str:
    """A table cell: a nested table for a dict, numbers right-aligned, floats to 4 significant digits."""
    if isinstance(v, dict):
        return f"<td>{_table(v)}</td>"
    if isinstance(v, float):
        text = f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    else:
        text = html.escape(json.dumps(v) if isinstance(v, list) else str(v))
    return f"<td class='{'num' if isinstance(v, (int, float)) else ''}'>{text}</td>"


def _table(rows: Mapping[str, Any]) -> str:
    """A two-column table; nested tables (dict values) come last."""
    items = sorted(rows.items(), key=lambda kv: isinstance(kv[1], dict))
    return f"<table>{''.join(f'<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>' for k, v in items)}</table>"


def _figure(rec: FigureRecord) -> str:
    """The picture (or MP4) embedded as a base64 ``data:`` URI, with its caption."""
    path, title = Path(rec.path), html.escape(rec.title)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    src = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
    media = (f"<video controls loop muted src='{src}'></video>" if mime == "video/mp4"
             else f"<img alt='{title}' src='{src}'>")
    caption = f"<figcaption><b>{title}</b>{' — ' + html.escape(rec.caption) if rec.caption else ''}</figcaption>"
    return f"<figure id='{html.escape(rec.key)}'>{media}{caption}</figure>"


def write_report(
    path: str | Path, title: str, figures: Iterable[FigureRecord], config_text: str | None = None,
    metrics: Mapping[str, Mapping[str, Any] | None] | None = None, notes: Iterable[str] = (),
    subtitle: str = "", appendix: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Path:
    """Write the page: a header, notes (e.g. pictures skipped and why), metric tables (one per entry of
    ``metrics``), the figures grouped by ``section`` in order of first appearance, and the configuration."""
    sections: dict[str, list[FigureRecord]] = {}
    for f in figures:
        if Path(f.path).is_file():
            sections.setdefault(f.section, []).append(f)
    esc = html.escape
    tables = "".join(f"<section><h3>{esc(name)}</h3>{_table(table)}</section>"
                     for name, table in (metrics or {}).items() if table)
    nav = " · ".join(f"<a href='#sec{i}'>{esc(s)}</a>" for i, s in enumerate(sections))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)} · generated "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by vqgan</p></header><main>",
        *(f"<div class='note'>{esc(n)}</div>" for n in notes),
        f"<div class='tables'>{tables}</div>" if tables else "",
        f"<p>{nav}</p>" if nav else "",
        *(f"<h2 id='sec{i}'>{esc(name)}</h2><div class='grid'>{''.join(map(_figure, recs))}</div>"
          for i, (name, recs) in enumerate(sections.items())),
        # long tables (e.g. the evaluation protocol) after the pictures
        *(f"<h2>{esc(name)}</h2>{_table(table)}" for name, table in (appendix or {}).items() if table),
        f"<h2>Configuration</h2><pre>{esc(config_text)}</pre>" if config_text else "",
        "</main></body></html>",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def report_for_run(run_dir: str | Path, figures_dir: str | Path | None = None, output: str | Path | None = None,
                   title: str | None = None) -> Path:
    """The report of a run folder: its config, metrics, evaluation and the figures indexed in ``figures_dir``
    (default ``RUN_DIR/visualizations``); without an index, the training diagnostics and last sample grid."""
    run_dir = Path(run_dir)
    figures_dir = Path(figures_dir) if figures_dir else run_dir / "visualizations"
    config = run_dir / "config.yaml"
    evaluation = _read_json(run_dir / "evaluation.json") or _read_json(figures_dir / "evaluation.json") or {}
    metrics = {"Training validation metrics": _read_json(run_dir / "metrics.json"),
               "Evaluation": evaluation.get("metrics")}
    index = _read_json(figures_dir / "figures.json")
    if index is not None:  # written by visualize_model, paths relative to its folder
        figures = [FigureRecord(**{**f, "path": figures_dir / f["path"]}) for f in index.get("figures", [])]
        notes, metrics["Latent statistics"] = list(index.get("notes", [])), index.get("statistics")
    else:
        figures = [FigureRecord("samples", f"Reconstructions ({p.stem})", p, "Reconstructions")
                   for p in sorted((run_dir / "samples").glob("*.png"))[-1:]]
        notes = []
        try:
            figures += diagnostics_figures(run_dir, figures_dir)
        except FileNotFoundError as e:
            notes.append(f"training diagnostics not shown: {e}")
    return write_report(output or run_dir / "report.html", title or f"vqgan run {run_dir.name}", figures,
                        config.read_text() if config.is_file() else None, metrics, notes,
                        str(run_dir.resolve()), {"Evaluation protocol": evaluation.get("protocol")})


# -- headless browser helpers (rendering checks and the README screenshot) -----------------------------------
def find_browser() -> str | None:
    """Path of a Chromium executable (Debian's ``chromium``, or ``chromium-browser`` / ``google-chrome``)."""
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next(filter(None, map(shutil.which, names)), None)


def _run_browser(browser: str | None, html_path: str | Path, extra: list[str], timeout: float):
    """Open the page in headless Chromium (default: :func:`find_browser`'s) with a throw-away profile
    (otherwise it writes into, and locks, the user's)."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium executable found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="vqgan-chromium-") as profile:
        args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--user-data-dir={profile}", "--no-first-run",
                "--virtual-time-budget=10000", *extra, Path(html_path).resolve().as_uri()]
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def rendered_image_status(html_path: str | Path, browser: str | None = None,
                          timeout: float = 120) -> tuple[int, int]:
    """Open the page in headless Chromium and return ``(images loaded, images total)`` as counted by the page's
    own script once loaded (see the module docstring)."""
    res = _run_browser(browser, html_path, ["--dump-dom"], timeout)
    body = re.search(r"<body[^>]*>", res.stdout)
    if body is None:
        raise RuntimeError(f"Chromium rendered no <body> (exit {res.returncode}): {res.stderr[-500:]}")
    counts = dict(re.findall(r'data-images-(loaded|total)="(\d+)"', body.group(0)))
    if len(counts) < 2:
        raise RuntimeError("the page's load script did not run (no data-images-* attributes on <body>)")
    return int(counts["loaded"]), int(counts["total"])


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 1600,
               browser: str | None = None, timeout: float = 120) -> Path:
    """A PNG screenshot of the top ``width x height`` pixels of the page, taken by headless Chromium."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    res = _run_browser(browser, html_path, [f"--window-size={width},{height}", f"--screenshot={png_path}"],
                       timeout)
    if not png_path.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-500:]}")
    return png_path
