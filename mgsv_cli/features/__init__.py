"""features: the frozen encoders (CLIP ViT-B/32, AST) and the exact MGSV-EC feature recipe.

``recipe`` owns every number of the recipe (1 fps, 50 frames, 16 kHz, 96 windows every
2.5 s, 10 s windows, 240 s, the filterbank); ``encoders`` loads CLIP and AST
(``load_encoders`` is the single entry point) and turns files into tokens; ``weights``
finds, downloads and reports the pretrained weights (one Hugging Face cache probe,
shared by loading and ``mgsv models list``).

May import: base modules and ``media``. Never the networks, the index or anything above.
"""
