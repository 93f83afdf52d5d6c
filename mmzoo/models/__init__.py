"""transformers models from checkpoints of any format: ``load.py`` (``mmzoo.load_model``, dense models and
the processor), ``moe.py`` (MoE layouts: transformers' Mixtral / Qwen2-MoE or mmzoo's own modules), both
assembled from ``build.py``."""
