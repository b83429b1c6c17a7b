"""``python -m ipcclient``: the ``ipc`` command (see :mod:`ipcclient.cli`)."""

from ipcclient.cli import console_main

if __name__ == "__main__":
    console_main()
