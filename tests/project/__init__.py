"""The repository itself: docs, examples, packaging, and the layering of imports."""
