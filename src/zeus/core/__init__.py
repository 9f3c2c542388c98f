"""Sans-IO core: region layout, ring and arena bookkeeping, spin policy.  No I/O here."""
