"""Jinja2 environments of the report templates and the escaping of text for them.

HTML templates are autoescaped; the text templates (.md, .tex) get the ``md``/``tex``
filters (and ``mdcell``/``texcell`` for a bold-aware table cell).
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"

_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "³": r"$^3$",
    "σ": r"$\sigma$",
    "×": r"$\times$",
    "λ": r"$\lambda$",
    "√": r"$\surd$",
    "—": "--",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "ρ": r"$\rho$",
    "·": r"$\cdot$",
    "<": r"$<$",
    ">": r"$>$",
}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def tex_escape(text: object) -> str:
    return _TEX_RE.sub(lambda m: _TEX[m.group()], str(text))


def md_escape(text: object) -> str:
    return str(text).replace("|", r"\|")


def env(autoescape: bool) -> jinja2.Environment:
    """HTML templates (autoescaped) or text templates (.md/.tex: block tags eat their line)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=not autoescape,
        lstrip_blocks=not autoescape,
        keep_trailing_newline=True,
    )
    env.filters["tex"] = tex_escape
    env.filters["md"] = md_escape
    env.filters["mdcell"] = lambda c: f"**{md_escape(c.text)}**" if c.bold else md_escape(c.text)
    env.filters["texcell"] = lambda c: (
        rf"\textbf{{{tex_escape(c.text)}}}" if c.bold else tex_escape(c.text)
    )
    return env
