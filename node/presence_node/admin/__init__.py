"""The admin HTTP API (aiohttp): health, readiness, listings and metrics."""
