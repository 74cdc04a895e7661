"""mcp: ``mgsv mcp``, the public API as the tools of a Model Context Protocol server, for agents.

``tools`` is what the server keeps between calls (the library, the warm models of
``mgsv serve``'s engine, the folders it may read and write) and the tools' work, in plain
Python: each tool calls the public API (``api``) and returns JSON-ready values or raises
a typed ``MgsvError``. ``server`` registers them with the official ``mcp`` SDK (imported
there only, inside functions), is the one place where errors become tool errors (one
line, never a traceback), and runs the stdio transport or streamable HTTP behind
``mgsv serve``'s own guards (the token, the Host check) on its uvicorn server.

Which files are read or written follows ``mgsv serve``'s rules (``serve.files``): a
video must lie under a folder given with ``--allow`` (or the output folder), a track
must be one of the library's, and outputs go under the output folder only.

May import: base modules, ``media``, ``index``, ``editor``, ``settings``, ``api`` and
``serve``. Never research or the CLI.
"""
