"""Virtual circuits, sans-IO: the handshake that makes one and the encrypted records it uses.

This package joins ``wire/`` (frames, flows) and ``security/`` (keys,
blessings) and still touches no socket. The transport drives it.
"""
