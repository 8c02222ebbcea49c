"""The worker daemon (function processes, shared-memory objects) and the `faasd` entry point."""
