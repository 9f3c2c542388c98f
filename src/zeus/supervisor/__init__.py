"""The supervisor: pure policy (restart, recycle, balance) apart from process mechanism."""
