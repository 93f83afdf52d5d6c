"""Looking at checkpoints: ``api.py`` (``mmzoo.inspect``, ``mmzoo.diff``, ``mmzoo.check_checkpoint``),
``config_diff.py`` (the settings part of diff), ``cli.py`` (``mmzoo inspect``, ``mmzoo diff``)."""
