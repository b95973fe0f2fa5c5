"""The local web app (`entrep serve`): a FastAPI layer over the library and one static page."""

from entrep.server.app import create_app, is_loopback, label_parts

__all__ = ["create_app", "is_loopback", "label_parts"]
