"""Wire protocol: messages per channel, framing, handshake and typed errors. No business logic."""
