"""Small Sphinx extension used by the book build (loaded from _config.yml).

Sphinx 7.4 writes an inline ``<script>`` twice when an extension adds it with
``app.add_js_file(None, body=...)`` after the builder was created: once under the file
name ``None`` and once under ``''``.  sphinx-thebe (loaded by Jupyter Book) does this
with ``const THEBE_JS_URL = ...``, so every page threw "Identifier 'THEBE_JS_URL' has
already been declared" in the browser console.  This extension drops exact duplicates of
inline scripts from each page.
"""

from __future__ import annotations

from typing import Any


def _dedupe_inline_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for js in scripts:
        filename = getattr(js, "filename", js)
        attributes = getattr(js, "attributes", None)
        if not filename and isinstance(attributes, dict):
            key = (getattr(js, "priority", None), tuple(sorted(attributes.items())))
            if key in seen:
                continue
            seen.add(key)
        kept.append(js)
    scripts[:] = kept


def setup(app):
    # Run after the other html-page-context handlers (myst-nb adds the widget scripts).
    app.connect("html-page-context", _dedupe_inline_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
