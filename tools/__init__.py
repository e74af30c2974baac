"""Developer tooling that is never deployed (Chalice packages only app.py and chalicelib/)."""
