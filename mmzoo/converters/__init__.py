"""The converters: ``registry.py`` (the formats, detection), one module per checkpoint layout (``hf``,
``llava``, ``internal``, ``moe_llava``, ``cerebras``; shared helpers in ``common``), ``pipeline.py``
(read → cast, upcycle → atomic write → verify), ``assemble.py`` (``mmzoo init``), ``llm.py`` (plain-LLM
upcycling) and ``cli.py`` (``mmzoo convert``, ``init``, ``formats``)."""
