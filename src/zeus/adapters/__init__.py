"""Adapters that run WSGI and ASGI applications inside a Zeus worker."""
