"""Polygon's two doors: the WebSocket reader and the REST client."""
