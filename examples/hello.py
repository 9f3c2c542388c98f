"""The original design's hello world: a native Zeus handler.

    zeus serve examples.hello:app
"""

from zeus import Request, Response


def app(req: Request) -> Response:
    """Answer every request with a greeting."""
    return Response(200, [("content-type", "text/plain")], b"Hello from Zeus!\n")
