"""Renderers: turn a Report into a terminal table, JUnit XML, Markdown, HTML or Gradescope JSON."""
