"""The sans-I/O SIP core: bytes and time in, messages and actions out.

Nothing in this package imports ``asyncio`` or ``socket`` (a test enforces it):
the ``net`` package carries its actions out.
"""
