"""The HTTP/1.1 front: connections, parsing, limits, and the server process."""
