"""The admin API: manage exports, run them on demand, follow their runs (issue 7)."""
