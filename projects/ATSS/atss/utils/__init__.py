"""atss.utils: :mod:`.testing`, the builders that tests and tools share (as Detectron2's
``detectron2/utils/testing.py``)."""
