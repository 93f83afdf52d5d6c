"""``mmzoo demo``: ``api.py`` runs the whole pipeline (each subsystem's ``demo_step``) on the tiny real
models of ``tiny.py``, which the tests use too; ``cli.py`` is the command."""
