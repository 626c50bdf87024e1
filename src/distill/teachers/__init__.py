"""Teachers: :class:`~distill.teachers.teacher.Teacher` (one route for soft targets, whatever
the teacher is made of) and :class:`~distill.teachers.teacher.Ensemble`; the soft-target store
(:mod:`distill.teachers.store`), a keyed, sharded cache of a teacher's outputs on disk."""
