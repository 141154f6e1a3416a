"""The study file: :mod:`.study` (``StudySpec``, :func:`~.study.load_spec`), its sections
(:mod:`.sections`, :mod:`.loss`, :mod:`.training`, :mod:`.points`), configuration hashes
(:mod:`.hashing`), reading YAML with located errors (:mod:`.io`), path resolution
(:mod:`.paths`), ``--set`` overrides (:mod:`.overrides`), the editor's JSON Schema
(:mod:`.schema`) and new study files (:mod:`.scaffold`). No Ray, no torch."""
