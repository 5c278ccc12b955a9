"""``python -m synthetic``: see ``synthetic.generate``."""
if __name__ == "__main__":  # not when a rendering process of the spawn pool imports this module as __mp_main__
    from synthetic.generate import main

    main()
