"""Visual debugging: a run of any search strategy as one self-contained HTML page."""

from agent_selfevolve.viz.report import render_run_html, run_view, safe_filename, write_run_html

__all__ = ["render_run_html", "run_view", "safe_filename", "write_run_html"]
