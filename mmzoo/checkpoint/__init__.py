"""What a checkpoint is, whatever its layout: ``ModelSpec`` and ``Checkpoint`` (spec.py), finding and reading
the config and tokenizer files of a folder (locate.py, tokenizer_files.py), and the ``<image>`` token every
VLM needs (image_token.py). The converters read and write these; nothing here knows a layout."""
