"""The synthetic multilingual pedestrian dataset of the demo and the tests (``python -m synthetic --help``).

A generator only: nothing in data/, model/, engine/ or utils/ imports it. ``generate``
writes the dataset (the CLI); ``captions`` holds the identities and their en/ch/fr/de
captions, ``render`` draws them, ``reference`` scores the rankers that know their
attributes, and ``tokenizer`` writes the text encoder folder.
"""
