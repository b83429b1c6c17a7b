"""The transport over real sockets: VCs, flows, polling, inline calls, recovery from faults,
hostile peers."""
