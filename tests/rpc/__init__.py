"""Calls end to end: client and server, the failure path, naming and mount tables,
discharges, the command line."""
