"""Applications the cross-process and end-to-end tests run inside real workers."""
