"""Server-rendered web page: Jinja2 templates, one stylesheet, no JavaScript required."""
