"""MCP tool server for amoCRM and Moizvonki, with a SQLite cache for sales dashboards."""

__version__ = "0.1.0"
