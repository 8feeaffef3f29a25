"""The HTTPS side of the broker: approval pages, the staff portal and the REST API in one
aiohttp application (:func:`create_app`), the device web proxy in another on its own origin
(:func:`create_device_app`)."""

from broker.http.app import create_app, create_device_app
from broker.http.site import WebSite

__all__ = ["WebSite", "create_app", "create_device_app"]
