"""End-to-end tests: the real ``zeus`` command on a free port, driven by real HTTP clients."""
