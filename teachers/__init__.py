"""CLIP teacher ensembles and captioners, loaded from open_clip or transformers specs."""
