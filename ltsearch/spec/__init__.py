"""The study file: :mod:`.study` (``StudySpec``, :func:`~.study.load_spec`), its sections
(:mod:`.sections`, :mod:`.loss`, :mod:`.training`, :mod:`.points`), configuration hashes
(:mod:`.hashing`), reading YAML with located errors (:mod:`.io`) and path resolution
(:mod:`.paths`). No Ray, no torch."""
