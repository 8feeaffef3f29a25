"""The HTTPS side of the broker: approval pages, the staff portal, the REST API and the
device web proxy, all in one aiohttp application (see :func:`create_app`)."""

from broker.http.app import create_app
from broker.http.site import WebSite

__all__ = ["WebSite", "create_app"]
