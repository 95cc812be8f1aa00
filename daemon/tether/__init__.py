"""tether: keeps OpenAI background responses on a tether."""

__version__ = "0.1.0"
