"""The server side: the threaded RPC server, authorizers, and the services that ship with it.

:mod:`ipcclient.server.server` serves objects (each flow through
:mod:`ipcclient.server.flows`); :mod:`ipcclient.server.authorizer` decides who may call them.
"""
