"""Every operation that writes: wrap, make-ref, attach an adapter, export, push.

Each module is one operation the CLI calls; they may use every layer below (modeling, formats,
checkpoint storage, io) and none of them imports another operation's private parts.
"""

__all__: list[str] = []
