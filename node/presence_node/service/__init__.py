"""The presence service: what the node does with a request it accepted.

One module per verb or noun, after OpenSIPS's layout (publish, subscribe,
notify, register, watchers), glued by :mod:`.dispatch`.  These modules talk
to storage and packages through their interfaces and send NOTIFYs through
:class:`.notify.Notifier`; they never touch sockets.
"""
