"""Against the specification: the test vectors, a second implementation, the Go scenarios,
the interop cases, and the client's fast path against its general path."""
