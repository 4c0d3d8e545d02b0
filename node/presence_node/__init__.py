"""A clustered SIP presence server: PUBLISH, SUBSCRIBE and NOTIFY for presence,
presence.winfo, dialog (BLF) and dialog;sla (SLA)."""

__version__ = "0.1.0"
