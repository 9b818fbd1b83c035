"""The project's named datasets are registered when the checked loader first asks for them
(atss.data.builtin), without writing a file; their files are generated on first read."""

import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from atss.data import DatasetError, get_checked_detection_dataset_dicts
from atss.data.builtin import builtin_dataset_names, register_builtin_dataset


@pytest.fixture
def unregistered_shapes_val(tmp_path, monkeypatch):
    """``shapes_val`` not registered, the cache in ``tmp_path``; unregistered again afterwards,
    so later tests register it with their own cache."""

    def unregister():
        if "shapes_val" in DatasetCatalog.list():
            DatasetCatalog.remove("shapes_val")
            MetadataCatalog.remove("shapes_val")

    unregister()
    monkeypatch.setenv("ATSS_CACHE", str(tmp_path))
    yield tmp_path
    unregister()


def test_registering_a_builtin_name_writes_nothing(unregistered_shapes_val):
    """Registration sets the metadata COCOEvaluator reads (classes, id map, the JSON's path)
    but writes no file. Fails if the shapes are generated at registration again."""
    assert register_builtin_dataset("shapes_val")
    meta = MetadataCatalog.get("shapes_val")
    assert meta.thing_classes == ["rectangle", "ellipse", "triangle"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.json_file.startswith(str(unregistered_shapes_val))
    assert os.listdir(unregistered_shapes_val) == []


def test_checked_loader_registers_and_generates_a_builtin_dataset_on_first_use(
    unregistered_shapes_val,
):
    """``get_checked_detection_dataset_dicts("shapes_val")`` with the name not registered (a
    fresh process under Detectron2's tools) registers it and writes its 16 images and JSON
    into the cache, where the metadata's json_file then is. Fails if the loader does not
    register the project's names ("not registered") or the files go elsewhere."""
    dicts = get_checked_detection_dataset_dicts("shapes_val", filter_empty=False)
    assert len(dicts) == 16
    json_file = MetadataCatalog.get("shapes_val").json_file
    assert os.path.isfile(json_file) and json_file.startswith(str(unregistered_shapes_val))
    assert all(d["file_name"].startswith(str(unregistered_shapes_val)) for d in dicts)


def test_unknown_name_lists_the_known_ones():
    """A name neither registered nor the project's: the error names it and lists the project's
    names among the known ones."""
    assert not register_builtin_dataset("no_such_dataset")
    with pytest.raises(DatasetError, match="'no_such_dataset' is not registered") as e:
        get_checked_detection_dataset_dicts("no_such_dataset")
    assert all(name in str(e.value) for name in builtin_dataset_names())
