"""Cross-process tests: real processes on both ends of real channel regions."""
