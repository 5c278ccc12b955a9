"""Data pipeline: annotations (aligned language files), text (cleaning, tokens, MLM masks),
transforms, datasets, loader (collate and loaders), sampler, and the synthetic dataset.

Submodules are imported explicitly (``from data.loader import build_train_loader``) so that
``python -m data.synthetic`` does not pull in torch-side modules it does not need.
"""
