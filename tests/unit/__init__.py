"""Sans-IO units: codec, headers, frames, mux, records, handshake state machines, liveness,
the read role, poll rules, retry, security values and names. No network (a socketpair
at most)."""
