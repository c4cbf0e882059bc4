"""Self-contained HTML pages (inline CSS, images as data URIs): no external assets, no scripts."""

from __future__ import annotations

import base64
from functools import cache

import jinja2

from grader import __version__
from grader.report import Report


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("grader.render", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def render_html(report: Report) -> str:
    return environment().get_template("report.html.j2").render(
        r=report, pictures=report.model_pictures, picture=lambda name: data_uri(report.attachments[name]),
        version=__version__)


def render_page(template: str, **context) -> str:
    return environment().get_template(template).render(version=__version__, **context)
