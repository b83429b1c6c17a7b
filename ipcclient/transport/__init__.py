"""Blocking-socket transport over the sans-IO wire and VC layers.

:mod:`ipcclient.transport.conn` holds a VC over one socket (its parts: ``flow``, ``writer``,
``reader``, ``readrole``, ``liveness`` (with ``keepalive``, its settings), ``polling``,
``inline``, ``parking``, ``background``, ``waits``); :mod:`ipcclient.transport.manager` dials
(``dial``) and listens (``ratelog`` keeps its warnings short).
docs/concurrency.md describes the threads and the lock.
"""
