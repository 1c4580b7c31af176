"""Sphinx configuration: Markdown pages (MyST) and the CLI reference from the real argparse parser.

``make docs`` builds with ``-W`` (every warning is an error) into ``docs/_html``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's code, not an installed copy
# Some options default to an environment variable (``--password`` to $OCCI_PASSWORD): the
# reference shows the defaults, so nothing of the builder's environment may reach them.
for name in [n for n in os.environ if n.startswith(("OCCI_", "EC2_", "AWS_", "ONE_", "IMAGEKIT_"))]:
    del os.environ[name]

project = "imagekit"
author = "the imagekit authors"
copyright = "the imagekit authors"
extensions = ["myst_parser", "sphinxarg.ext"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_html"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "alabaster"
html_theme_options = {"nosidebar": False}
# ``console`` and ``sh`` blocks hold shell sessions and synopses; nothing else to highlight strictly.
highlight_language = "none"
suppress_warnings = ["misc.highlighting_failure"]
