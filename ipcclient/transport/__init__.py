"""Blocking-socket transport over the sans-IO wire and VC layers.

:mod:`ipcclient.transport.conn` holds a VC over one socket and its flows;
:mod:`ipcclient.transport.manager` dials and listens.
"""
