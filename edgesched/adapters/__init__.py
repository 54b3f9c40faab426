"""Adapters: the only code that touches aiomqtt, aiohttp, prometheus_client and sockets."""
