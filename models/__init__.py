"""models: the networks and everything that knows their maths.

``made`` (MaDe), ``losses``, ``metrics`` (the benchmark's mIoU, R@k, MoR@k and the
exact-length cut), ``variants`` (frozen model/training configs read from the TOMLs
beside this file), ``checkpoint`` (safetensors weights with their config; ``load_model``
is the single loading entry point). Shipped as ``mgsv_cli.models``.

May import: base modules and ``features.recipe`` (the token shapes the networks are built
for). Never media I/O, the index, the editor, research or the app.
"""
