"""Sockets: UDP and TCP listeners and the NOTIFY sender."""
