"""The web pages under ``/ui``: server-rendered templates over the same JSON API a script uses.

``service.ui.pages`` holds the handlers; ``templates/`` the Jinja2 templates;
``static/`` one stylesheet and one plain script. Nothing is built and nothing
is fetched from the internet.
"""

from __future__ import annotations

from service.ui.pages import WebPages

__all__ = ["WebPages"]
