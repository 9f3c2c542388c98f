"""Long-running reliability suites for Zeus (chaos, slow clients, soak, drain and reload)."""
