"""media: everything that touches audio and video files, and nothing about the network.

ffmpeg I/O (``ffmpeg``: probe, frames at 1 fps, mono audio, running ffmpeg with readable
errors), finding and hashing music files (``files``), beat detection on a signal
(``beats``) and synthesised media for demos and tests (``synth``).

May import: base modules (``errors``, ``paths``, ``device``). Never the encoders, the
networks, the index, the editor, research or the app.
"""
