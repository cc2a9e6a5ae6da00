"""The report's HTML: one static page, no script, no network; images are files beside it."""

from __future__ import annotations

import html
from dataclasses import dataclass

from momentumgs.report.blocks import COLUMNS, cell_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1560px; color: #222;
       padding: 0 1em }
h1 { font-size: 1.5em } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc }
table { border-collapse: collapse; margin: 0.5em 0 } td, th { padding: 2px 10px; text-align: right }
th { background: #eee } td:first-child, th:first-child { text-align: left }
figure { margin: 0.8em 0 } figcaption { font-size: 0.9em; color: #444; margin-bottom: 4px }
img { max-width: 100% } figure img { width: 100%; max-width: 1200px }
pre { background: #f6f6f6; padding: 0.6em; overflow: auto }
.note { color: #555; font-size: 0.9em } table.facts td { text-align: left }
"""


@dataclass
class ViewEntry:
    name: str
    image: str  # path relative to the page
    psnr: float
    ssim: float
    lpips_vgg: float


def table(headings: list[str] | None, rows: list[list[str]], css_class: str = "") -> str:
    head = (
        "" if headings is None else "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headings) + "</tr>"
    )
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}">{head}{body}</table>'


def facts_table(facts: list[tuple[str, str]]) -> str:
    return table(None, [[k, v] for k, v in facts], "facts")


def metrics_table(means: dict[str, float]) -> str:
    """Raw and colour-corrected means, one row each, labelled."""
    rows = []
    for label, suffix in (("raw", ""), ("colour-corrected (per image, the papers' protocol)", "_cc")):
        rows.append(
            [
                label,
                f"{means['psnr' + suffix]:.2f}",
                f"{means['ssim' + suffix]:.4f}",
                f"{means['lpips_vgg' + suffix]:.4f}",
                f"{means['lpips_alex' + suffix]:.4f}",
            ]
        )
    return table(["", "PSNR (dB)", "SSIM", "LPIPS-VGG", "LPIPS-Alex"], rows)


def blocks_table(rows: list[dict]) -> str:
    return table(
        [h for _, h, _ in COLUMNS], [[cell_text(r[k], spec) for k, _, spec in COLUMNS] for r in rows]
    )


def view_figures(views: list[ViewEntry]) -> str:
    parts = []
    for v in views:
        caption = (
            f"{html.escape(v.name)}: PSNR {v.psnr:.2f} dB, SSIM {v.ssim:.4f}, LPIPS-VGG {v.lpips_vgg:.4f} "
            "(photo | render | error)"
        )
        parts.append(
            f'<figure><figcaption>{caption}</figcaption><img src="{html.escape(v.image)}" '
            f'alt="{html.escape(v.name)}: photo, render, error"></figure>'
        )
    return "\n".join(parts)


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """A whole HTML document: a title, then (heading, inner HTML) sections."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{inner}" for h, inner in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
