"""ILSVRC-LOC XML reader: the real 50-file sample, layout handling, and hostile/broken XML."""

from __future__ import annotations

import json
import resource
import time
import tracemalloc
from pathlib import Path
from xml.etree import ElementTree

import pytest
from lxml import etree

from boxmask.readers import open_reader, stable_box_id
from boxmask.readers.ilsvrc import ILSVRCReader
from boxmask.records import ErrorRecord, ImageRecord

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "ilsvrc_loc"
CLS_LOC = SAMPLE / "Annotations" / "CLS-LOC"
BAD = REPO / "tests" / "data" / "readers" / "ilsvrc_bad"


def _records(reader) -> list[ImageRecord]:
    items = list(reader)
    assert all(isinstance(i, ImageRecord) for i in items), [i for i in items
                                                          if isinstance(i, ErrorRecord)]
    return items


def _xml_truth(xml: Path) -> tuple[tuple[int, int], list[tuple[str, tuple[int, ...]]]]:
    """Declared size and (name, 1-based bndbox) per object, read with the stdlib parser."""
    root = ElementTree.parse(xml).getroot()
    size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    objs = [(o.findtext("name"), tuple(int(o.find("bndbox").findtext(t))
                                       for t in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")]
    return size, objs


def test_sample_gives_one_record_per_xml_with_every_box():
    records = _records(open_reader("ilsvrc-loc", SAMPLE))
    xmls = sorted(CLS_LOC.rglob("*.xml"))
    assert len(records) == len(xmls) == 50
    assert sum(len(r.boxes) > 1 for r in records) == 21
    n_objects = sum(x.read_text().count("<bndbox>") for x in xmls)
    assert sum(len(r.boxes) for r in records) == n_objects


def test_sample_boxes_are_the_xml_values_in_the_declared_frame():
    for rec in _records(ILSVRCReader(SAMPLE)):
        xml = CLS_LOC / Path(rec.image_path).with_suffix(".xml")
        (w, h), objs = _xml_truth(xml)
        assert (rec.width, rec.height) == (w, h)
        assert [(b.label, b.xyxy) for b in rec.boxes] == [(name, tuple(bnd)) for name, bnd in objs]
        assert [b.index for b in rec.boxes] == list(range(len(objs)))
        assert [b.box_id for b in rec.boxes] == [stable_box_id(rec.image_id, i)
                                                for i in range(len(objs))]


def test_ilsvrc_xml_coordinates_count_from_zero():
    """Evidence in the real files: boxes start at 0 and end at width-1, never at width."""
    boxes = [(rec.width, rec.height, b.xyxy) for rec in _records(ILSVRCReader(SAMPLE))
             for b in rec.boxes]
    assert any(x0 == 0 for _, _, (x0, _, _, _) in boxes)  # impossible if counted from 1
    assert all(0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h for w, h, (x0, y0, x1, y1) in boxes)
    assert any(x1 == w - 1 for w, _, (_, _, x1, _) in boxes)


def test_voc_style_trees_can_be_read_counting_from_one():
    zero = next(iter(ILSVRCReader(SAMPLE)))
    one = next(iter(ILSVRCReader(SAMPLE, origin=1)))
    assert one.boxes[0].xyxy == tuple(v - 1 for v in zero.boxes[0].xyxy)


def test_first_sample_file_by_hand():
    # n01440764_10040.xml: <size> 500x375, <bndbox> 64 103 369 277 (read by eye).
    first = next(iter(ILSVRCReader(SAMPLE)))
    assert first.image_id == "n01440764_10040"
    assert first.image_path == "train/n01440764/n01440764_10040.JPEG"
    assert (first.width, first.height) == (500, 375)
    assert first.boxes[0].xyxy == (64, 103, 369, 277)
    assert first.boxes[0].attrs == {"truncated": 0, "difficult": 0, "pose": "Unspecified"}
    assert first.group == "n01440764"


def test_image_paths_point_at_the_sample_jpegs_under_the_default_images_root():
    reader = ILSVRCReader(SAMPLE)
    assert reader.images_root.resolve() == (SAMPLE / "Data" / "CLS-LOC").resolve()
    for rec in reader:
        assert (reader.images_root / rec.image_path).is_file(), rec.image_path


def test_order_is_sorted_and_repeatable():
    a = [r.to_json() for r in ILSVRCReader(SAMPLE)]
    b = [r.to_json() for r in ILSVRCReader(SAMPLE)]
    assert a == b
    paths = [r["image_path"] for r in a]
    assert paths == sorted(paths)


def test_labels_come_from_the_synset_mapping():
    labels = ILSVRCReader(SAMPLE).labels()
    assert labels.index("n01440764") == 0 and len(labels) == 10
    assert labels.name("n01440764") == "tench"


def test_labels_without_a_mapping_are_the_wnids_seen(tmp_path):
    folder = tmp_path / "Annotations" / "CLS-LOC" / "val" / "n01440764"
    folder.mkdir(parents=True)
    for xml in (CLS_LOC / "val" / "n01440764").glob("*.xml"):
        (folder / xml.name).write_bytes(xml.read_bytes())
    reader = ILSVRCReader(tmp_path)  # no LOC_synset_mapping.txt there
    labels = reader.labels()
    assert len(labels) == 0
    list(reader)
    assert labels.ids == ["n01440764"]


@pytest.mark.parametrize("entry", [CLS_LOC, CLS_LOC / "val", CLS_LOC / "val" / "n01440764"])
def test_pointing_inside_the_tree_reads_the_same_records(entry):
    full = {r.image_id: r.to_json() for r in ILSVRCReader(SAMPLE)}
    part = [r.to_json() for r in ILSVRCReader(entry)]
    assert part and all(full[r["image_id"]] == r for r in part)
    expected = 50 if entry == CLS_LOC else 10
    assert len(part) == expected


def test_split_option_selects_train_or_val():
    train = _records(ILSVRCReader(SAMPLE, split="train"))
    val = _records(ILSVRCReader(SAMPLE, split="val"))
    assert (len(train), len(val)) == (40, 10)
    assert all(r.image_path.startswith("val/") for r in val)
    with pytest.raises(ValueError, match="split"):
        ILSVRCReader(CLS_LOC / "val", split="train")
    with pytest.raises(ValueError, match="split"):
        ILSVRCReader(SAMPLE, split="test")


def test_flat_val_folder_takes_the_group_from_the_first_object(tmp_path):
    val = tmp_path / "Annotations" / "CLS-LOC" / "val"
    val.mkdir(parents=True)
    src = next((CLS_LOC / "val" / "n01440764").glob("*.xml"))
    (val / src.name).write_bytes(src.read_bytes())
    (rec,) = _records(ILSVRCReader(tmp_path))
    assert rec.group == "n01440764"
    assert rec.image_path == f"val/{src.stem}.JPEG"


# ---- broken and hostile files --------------------------------------------------------------

def _bad() -> dict[str, list]:
    out: dict[str, list] = {}
    for item in ILSVRCReader(BAD):
        out.setdefault(item.image_id, []).append(item)
    return out


def test_empty_and_malformed_xml_become_read_errors():
    items = _bad()
    (empty,) = items["empty"]
    assert isinstance(empty, ErrorRecord) and empty.stage == "read"
    assert "empty" in empty.reason
    (malformed,) = items["malformed"]
    assert isinstance(malformed, ErrorRecord) and "malformed XML" in malformed.reason
    (size,) = items["size_not_numeric"]
    assert isinstance(size, ErrorRecord) and "width" in size.reason


def test_one_bad_box_is_a_box_error_and_the_other_boxes_still_come():
    items = _bad()
    for stem, bad_index in (("one_box_nonnumeric", 1), ("one_box_missing_coord", 0)):
        err, rec = items[stem]
        assert isinstance(err, ErrorRecord) and isinstance(rec, ImageRecord)
        assert err.box_id == stable_box_id(stem, bad_index)
        assert [b.index for b in rec.boxes] == [1 - bad_index]
        assert rec.boxes[0].xyxy == (64, 103, 369, 277)
    assert "'abc' is not a number" in items["one_box_nonnumeric"][0].reason
    assert "<ymax> is missing" in items["one_box_missing_coord"][0].reason
    (only,) = items["all_boxes_bad"]
    assert isinstance(only, ErrorRecord) and only.box_id == stable_box_id("all_boxes_bad", 0)


def test_any_doctype_is_refused():
    (err,) = _bad()["harmless_doctype"]
    assert isinstance(err, ErrorRecord)
    assert err.reason == "XML declares a DTD/entities; refused"


def test_billion_laughs_is_refused_fast_without_memory_growth():
    # The fully expanded entity would be 3 GB; libxml2 allocates outside tracemalloc's view,
    # so the process's peak resident size is what is checked.
    _bad()  # warm up imports and caches
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        items = _bad()
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert elapsed < 2.0 and peak < 1_000_000 and grown_kib < 50_000
    (err,) = items["billion_laughs"]
    assert err.reason == "XML declares a DTD/entities; refused"
    # UTF-16 passes the byte scan; the non-resolving parser stops the expansion itself.
    (err16,) = items["billion_laughs_utf16"]
    assert isinstance(err16, ErrorRecord) and "amplification" in err16.reason


def _xxe_tree(tmp_path: Path, encoding: str) -> tuple[Path, str]:
    secret = "BOXMASK-CANARY-51f0e2"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    folder = tmp_path / "Annotations" / "CLS-LOC" / "train" / "n01440764"
    folder.mkdir(parents=True)
    text = (f'<?xml version="1.0" encoding="{encoding}"?>\n'
            f'<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "{secret_file.as_uri()}">]>\n'
            "<annotation><filename>&xxe;</filename>"
            "<size><width>500</width><height>375</height></size>"
            "<object><name>&xxe;</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>\n")
    xml = folder / "n01440764_1.xml"
    xml.write_bytes(text.encode(encoding))
    return xml, secret


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16"])
def test_external_entity_is_never_read(tmp_path, encoding):
    xml, secret = _xxe_tree(tmp_path, encoding)
    # The file is a working attack: a resolving parser does leak the secret.
    leaky = etree.XMLParser(resolve_entities=True, load_dtd=True, no_network=True)
    assert secret in etree.tostring(etree.parse(str(xml), leaky), encoding="unicode")
    items = list(ILSVRCReader(tmp_path))
    dumped = json.dumps([i.to_json() for i in items])
    assert secret not in dumped
    (err,) = items
    assert isinstance(err, ErrorRecord) and err.reason == "XML declares a DTD/entities; refused"


def test_unsafe_file_stem_is_an_error_not_a_record(tmp_path):
    folder = tmp_path / "Annotations" / "CLS-LOC" / "train" / "n01440764"
    folder.mkdir(parents=True)
    good = CLS_LOC / "train" / "n01440764" / "n01440764_10040.xml"
    (folder / "bad name;rm.xml").write_bytes(good.read_bytes())
    (folder / "n01440764_10040.xml").write_bytes(good.read_bytes())
    items = list(ILSVRCReader(tmp_path))
    assert isinstance(items[0], ErrorRecord) and "not a safe file name" in items[0].reason
    assert isinstance(items[1], ImageRecord) and items[1].image_id == "n01440764_10040"
