"""The build of this repository whose hot modules are compiled by mypyc (see build.py)."""
